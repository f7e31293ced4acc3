"""Ray Tune sweep over fit.py runs, on a local Ray or an existing cluster (docs/tune.md).

    python scripts/tune.py --config configs/quick_cpu.yaml --num-samples 8 -- --trainer.max_epochs 5
    python scripts/tune.py --config configs/paper_focal.yaml --cv --search optuna --address auto \\
        --gpus-per-trial 1 --cpus-per-trial 4
    python scripts/tune.py --config configs/paper_focal.yaml --address auto \\
        --workers-per-trial 4 --gpus-per-trial 1   # each trial: 4 DDP workers (Ray Train), 1 GPU each

Options after ``--`` (or any option this script does not know) go to every trial as fit.py options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_bts.errors import run_main

REPO = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="fit.py config YAML; repeat to layer them")
    parser.add_argument("--space", default=str(REPO / "configs" / "tune_space.yaml"),
                        help="search-space YAML (default: configs/tune_space.yaml)")
    parser.add_argument("--num-samples", type=int, default=8, help="trials to run (default 8)")
    parser.add_argument("--cv", action="store_true",
                        help="each trial trains every fold of data.num_folds in turn; the metric is their mean")
    parser.add_argument("--search", choices=("random", "optuna"), default="random")
    parser.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                        help="asha stops weak trials early (per epoch, or per fold with --cv)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                        help="CPUs per trial (per worker with --workers-per-trial > 1)")
    parser.add_argument("--gpus-per-trial", type=float, default=0.0,
                        help="GPUs per trial (per worker with --workers-per-trial > 1); fractions share a GPU")
    parser.add_argument("--tpus-per-trial", type=float, default=0.0,
                        help="TPU chips per trial (Ray's custom TPU resource); trials use --accelerator tpu/xla")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help="data-parallel workers per trial, through Ray Train (DDP on CPU or GPU, across "
                        "nodes); the per-trial resources above are then per worker (default 1: one process)")
    parser.add_argument("--accelerator", default=None,
                        help="fit.py --accelerator for every trial: cpu, gpu, tpu, xla (default: from resources)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (auto, HOST:PORT, ray://HOST:PORT); default: a local Ray")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach --address")
    parser.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as fit)")
    parser.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial (default 2)")
    parser.add_argument("--output-dir", default="tune_runs", help="results go to OUTPUT_DIR/NAME (default tune_runs)")
    parser.add_argument("--name", default="sweep", help="experiment name (default sweep)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep OUTPUT_DIR/NAME")
    parser.add_argument("--seed", type=int, default=42, help="Optuna's sampler seed")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable set in every trial, e.g. XLA_FLAGS=...")
    args, train_args = parser.parse_known_args(argv)
    bad = [item for item in args.env if "=" not in item]
    if bad:
        parser.error(f"--env takes KEY=VALUE, got {bad[0]!r}")
    return args, [a for a in train_args if a != "--"]


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse(sys.argv[1:] if argv is None else argv)
    from lightning_bts.tune import Resources, SweepSettings, load_space, run_sweep

    settings = SweepSettings(
        configs=args.config, space=load_space(args.space), output_dir=args.output_dir, name=args.name,
        train_args=train_args, num_samples=args.num_samples, cv=args.cv, search=args.search,
        scheduler=args.scheduler,
        resources=Resources(args.cpus_per_trial, args.gpus_per_trial, args.tpus_per_trial),
        workers_per_trial=args.workers_per_trial,
        accelerator=args.accelerator, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        resume=args.resume, seed=args.seed, trial_env=dict(item.split("=", 1) for item in args.env),
        address=args.address, num_cpus=args.num_cpus, connect_timeout_s=args.connect_timeout)
    result = run_sweep(settings)  # a TuneSetupError (bad input) becomes "error: ..." and exit 2 (run_main)
    print(f"\ntrials: {result.trials_csv} and {result.trials_md}")
    if result.best_config:
        print(f"best val/dice {result.best_metrics.get('val_dice'):.4f} with {result.best_overrides}")
        print(f"best config: {result.best_config}  (python scripts/fit.py --config {result.best_config})")
        print(f"best checkpoint: {result.best_checkpoint}")
    if not result.complete:
        print("the sweep did not finish every trial; continue it with the same command plus --resume")
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
