"""Validate the port against the Keras original and write a Markdown report (GitHub issue 6).

Without ``--keras-model`` the checks run on a fresh, seeded Keras initialisation; with it, on your Keras
checkpoint of the original notebook (``.keras``, ``.h5`` or ``.weights.h5``), which ``--to-ckpt`` then converts
into a Lightning checkpoint for ``SegmentationModule.load_from_checkpoint``. Exits 0 only when every check
holds its tolerance. The checks themselves live in :mod:`lightning_bts.keras.parity`.

Examples::

    python scripts/validate_keras.py --data ../shared/data/figshare_brain_tumor --out reports/keras_parity.md
    python scripts/validate_keras.py --keras-model unet.h5 --to-ckpt unet.ckpt --out unet_parity.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from lightning_bts.errors import run_main
from lightning_bts.keras.parity import ParityConfig, run_parity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = ParityConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(defaults.data), help="dataset folder (images/, masks/, metadata.csv)")
    parser.add_argument("--count", type=int, default=defaults.count, help="slices for the forward/loss/metric checks")
    parser.add_argument("--size", type=int, default=defaults.size,
                        help="resize slices to SIZExSIZE for those checks (0: native size)")
    parser.add_argument("--keras-model", type=Path, help="Keras file of the original U-Net to validate")
    parser.add_argument("--to-ckpt", type=Path, help="write the validated weights as a Lightning checkpoint here")
    parser.add_argument("--loss", default="focal", choices=("focal", "bce"),
                        help="loss recorded in the Lightning checkpoint's hyperparameters")
    parser.add_argument("--steps", type=int, default=defaults.train_steps, help="training-parity steps")
    parser.add_argument("--train-batch", type=int, default=defaults.train_batch)
    parser.add_argument("--train-count", type=int, default=defaults.train_count, help="slices the steps cycle over")
    parser.add_argument("--train-size", type=int, default=defaults.train_size, help="training-parity image size")
    parser.add_argument("--train-losses", nargs="*", default=list(defaults.train_losses), choices=("focal", "bce"))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=Path("reports/keras_parity.md"), help="Markdown report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = ParityConfig(
        data=args.data, count=args.count, size=args.size or None, keras_model=args.keras_model, seed=args.seed,
        train_steps=args.steps, train_batch=args.train_batch, train_count=args.train_count,
        train_size=args.train_size, train_losses=tuple(args.train_losses),
    )
    report, net = run_parity(config)
    command = "python " + " ".join(shlex.quote(part) for part in [sys.argv[0], *(argv or sys.argv[1:])])
    preamble = (
        f"Produced by:\n\n```\n{command}\n```\n\n"
        "Every check runs both frameworks on the same weights and the same real slices. *Matched* torch runs "
        "use `KerasAdam` (Keras' Adam, step for step) and the loss as Keras trains it, which are the package's "
        "training defaults; the findings measure what stock torch Adam or a clipped BCE would change. "
        "Checks and tolerances: `lightning_bts/keras/parity.py` "
        "(`Tolerances`)."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.markdown("Keras parity report", preamble))
    print(f"report: {args.out} ({'PASS' if report.passed else 'FAIL'})")
    for check in report.checks:
        if not check.passed:
            print(f"FAIL {check.name}: {check.value:.3g} > {check.tolerance:.3g}")
    if args.to_ckpt is not None:
        if not report.passed:
            print(f"not writing {args.to_ckpt}: the checks above failed", file=sys.stderr)
            return 1
        from lightning_bts.keras.checkpoint import save_lightning_checkpoint

        save_lightning_checkpoint(net, args.to_ckpt, loss=args.loss)
        print(f"Lightning checkpoint: {args.to_ckpt}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    run_main(main)
