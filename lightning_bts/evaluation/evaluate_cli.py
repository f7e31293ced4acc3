"""``scripts/evaluate.py``: score checkpoint(s) on a dataset without training.

    python scripts/evaluate.py --ckpt runs/focal_fold0/v/checkpoints/last.ckpt --out eval/fold0
    python scripts/evaluate.py --ckpt runs/focal_fold0/v/checkpoints/last.ckpt --part test --out eval/test
    python scripts/evaluate.py --ckpt cv/runs/focal_fold*/cv/checkpoints/final.ckpt \\
        --data-root ../shared/data/figshare_brain_tumor --out eval/ensemble
    python scripts/evaluate.py --ckpt last.ckpt --data-root volumes/ --out eval/volumes   # images/*.nii.gz + masks/

Writes ``metrics.json`` (top level: every metric at each slice's original size, ``resolution: native``;
``model_grid``: the same at the model's grid; the post-processing and TTA used and where they came from) and
``per_image.csv`` (one row per slice: native columns, then ``model_grid_*``); ``--save-predictions`` adds
``predictions.npz`` (model-grid masks). The native pooled Dice, precision, recall, mean Dice per slice and mean
HD95 get 95 % intervals from a bootstrap over patients (``ci95``, ``ci_method``; ``--bootstrap N`` resamples,
0 for none). See :mod:`lightning_bts.evaluation.scoring` and :mod:`lightning_bts.evaluation.bootstrap`. A
``--data-root`` of NIfTI pairs (``images/<case>.nii.gz``, ``masks/<case>.nii.gz``) is scored per slice and per
volume in mm instead (``per_volume.csv``; :mod:`lightning_bts.evaluation.volume_scoring`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from lightning_bts.data.volume import PLANES
from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.backends import add_backend_argument
from lightning_bts.evaluation.bootstrap import DEFAULT_RESAMPLES
from lightning_bts.evaluation.data import PARTS
from lightning_bts.evaluation.outputs import format_table, write_evaluation
from lightning_bts.evaluation.predictor import PRECISIONS, Predictor
from lightning_bts.evaluation.scoring import Evaluation, evaluate_checkpoints
from lightning_bts.evaluation.settings import add_override_arguments
from lightning_bts.evaluation.volume_scoring import evaluate_volumes, is_volume_dataset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate one checkpoint, or several as an ensemble (mean probability), without training. "
        "Scores every slice at its original size (top-level metrics) and at the model's grid (model_grid), "
        "with the post-processing and TTA stored with the checkpoint (scripts/select_postprocessing.py).",
        epilog="Example: python scripts/evaluate.py --ckpt runs/focal_fold0/v/checkpoints/last.ckpt "
        "--part test --out eval/focal_fold0_test",
        allow_abbrev=False,
    )
    parser.add_argument("--ckpt", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s); several are averaged in probability")
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="dataset folder (images/, masks/, metadata.csv), or a folder of NIfTI pairs "
                        "images/<case>.nii.gz + masks/<case>.nii.gz (one case = one patient; scored per slice and per "
                        "volume, in mm); default: the checkpoint's own data, validation fold. An ensemble of "
                        "cross-validation folds has trained on every slice of its "
                        "own dataset: evaluate it on held-out data only (--part test, or another folder)")
    parser.add_argument("--part", default=None, choices=PARTS,
                        help="which slices: the checkpoint's val (default), train or held-out test patients "
                        "(data.test_fraction > 0 in training), or all; 'all' with --data-root")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/metrics.json and DIR/per_image.csv")
    add_override_arguments(parser)
    parser.add_argument("--precision", default="32-true", choices=tuple(PRECISIONS),
                        help="inference precision (default 32-true; bf16-mixed/16-mixed autocast)")
    add_backend_argument(parser)
    parser.add_argument("--pixel-spacing", nargs="+", type=float, metavar="MM", default=None,
                        help="mm per pixel of the original slices (one value, or row and column): Hausdorff "
                        "distances in mm (default: the model's pixel_spacing_mm if set, else pixels)")
    parser.add_argument("--axis", default="acquisition", choices=PLANES,
                        help="NIfTI volumes: the plane they are cut into slices along (default: as acquired)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: CUDA if present); a GPU "
                        "asked for but missing is an error")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="preprocessing cache (see data.cache_dir)")
    parser.add_argument("--save-predictions", action="store_true",
                        help="also write predictions.npz (masks at the model's grid)")
    parser.add_argument("--bootstrap", type=_resamples, default=DEFAULT_RESAMPLES, metavar="N",
                        help="resamples of the patients for the 95%% confidence intervals of the native scores "
                        f"(ci95 in metrics.json; seed 0; default {DEFAULT_RESAMPLES}; 0: none)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Evaluates, writes, prints what was written; returns the output folder.

    Raises:
        UserError: a bad checkpoint, option or dataset (``run_main`` prints it and exits 2).
    """
    args = parse_args(argv)
    if args.data_root is not None and is_volume_dataset(args.data_root):
        evaluation = _evaluate_volumes(args)
    else:
        evaluation = evaluate_checkpoints(
            args.ckpt, args.data_root, args.part, args.threshold, args.precision, args.device, args.batch_size,
            args.cache_dir, keep_predictions=args.save_predictions, tta=args.tta, postprocessing=args.postprocessing,
            pixel_spacing=args.pixel_spacing, bootstrap=args.bootstrap, backend=args.backend,
        )
    out = write_evaluation(evaluation, args.out)
    written = json.loads((out / "metrics.json").read_text())  # print what was written, not a second copy
    print(format_table(written))
    if "per_volume" in written:
        volumes = written["per_volume"]
        print(f"per volume ({volumes['n_volumes']}): Dice {100 * volumes['dice']:.2f}% pooled, "
              f"{100 * volumes['per_volume']['dice']:.2f}% mean; HD95 {volumes['hd95']:.2f} mm mean")
    extra = " and per_volume.csv" if evaluation.per_volume is not None else ""
    print(f"wrote {out / 'metrics.json'} and {out / 'per_image.csv'}{extra}")
    return out


def _evaluate_volumes(args: argparse.Namespace) -> Evaluation:
    """A folder of NIfTI pairs: options of slice datasets it does not take are refused, not ignored."""
    given = [name for name, value in (("--part", args.part not in (None, "all")), ("--pixel-spacing",
             args.pixel_spacing), ("--save-predictions", args.save_predictions), ("--cache-dir", args.cache_dir))
             if value]
    if given:
        raise ConfigError(f"{', '.join(given)} do not apply to a folder of NIfTI volumes ({args.data_root}): it is "
                          "scored whole, in mm from the scans' voxel spacing")
    predictor = Predictor.from_checkpoints(args.ckpt, args.device, args.precision, args.tta, args.postprocessing,
                                           args.threshold, args.backend)
    evaluation = evaluate_volumes(predictor, args.data_root, args.axis, args.batch_size or 8, args.bootstrap)
    evaluation.metrics["checkpoints"] = [str(path) for path in args.ckpt]
    return evaluation


def _resamples(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no intervals) or a number of resamples, got {value}")
    return value
