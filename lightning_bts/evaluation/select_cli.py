"""``scripts/select_postprocessing.py``: choose TTA and post-processing on validation data, store it in the checkpoint.

    python scripts/select_postprocessing.py --ckpt runs/focal_fold0/v/checkpoints/last.ckpt
    python scripts/select_postprocessing.py --ckpt cv/runs/focal_fold*/cv/checkpoints/final.ckpt   # a fold ensemble

See :mod:`lightning_bts.evaluation.selection` for the stages and :mod:`lightning_bts.evaluation.settings` for
where the choice is stored; evaluate.py, predict.py and the CV report apply it from then on.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lightning_bts.evaluation.predictor import PRECISIONS
from lightning_bts.evaluation.selection import Selection, select_postprocessing


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="select_postprocessing.py",
        description="Choose the TTA mode, the threshold, a connected-component rule and a fallback for empty slices on "
        "the checkpoints' own validation patients (a rule is kept only if it raises pooled validation Dice at the "
        "slices' original size), and store the choice inside every checkpoint given.",
        epilog="Then: python scripts/evaluate.py --ckpt SAME.ckpt --part test  (applies the stored choice)",
        allow_abbrev=False,
    )
    parser.add_argument("--ckpt", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s); several = an ensemble: members of one fold are averaged on its "
                        "validation part, members of different folds each predict their own fold (pooled)")
    parser.add_argument("--min-gain", type=float, default=0.0,
                        help="a stage's best candidate must beat the current choice by more than this pooled Dice "
                        "(default 0: any improvement)")
    parser.add_argument("--no-tta", action="store_true",
                        help="choose post-processing alone: TTA stays off (and is not computed)")
    parser.add_argument("--dry-run", action="store_true", help="print the choice, store nothing")
    parser.add_argument("--precision", default="32-true", choices=tuple(PRECISIONS),
                        help="inference precision (default 32-true)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="preprocessing cache (see data.cache_dir)")
    return parser.parse_args(argv)


def format_selection(selection: Selection) -> str:
    """Each stage's candidates with their validation Dice; the kept ones marked."""
    lines = [f"selected on {selection.record['n_images']} validation slices of fold(s) {selection.record['folds']} "
             f"({selection.record['metric']})"]
    for stage in selection.stages:
        verdict = f"kept: {stage['best']}" if stage["kept"] else f"unchanged: {stage['before']}"
        lines.append(f"{stage['stage']}: {verdict}")
        lines += [f"    {100 * c['dice']:7.2f}%  {c['setting']}" for c in stage["candidates"]]
    lines.append(f"paper's rule: Dice {100 * selection.baseline_dice:.2f}%; chosen: {selection.settings.describe()}, "
                 f"Dice {100 * selection.dice:.2f}%")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Selection:
    """Selects, stores (unless ``--dry-run``), prints.

    Raises:
        UserError: a bad checkpoint, option or dataset (``run_main`` prints it and exits 2).
    """
    args = parse_args(argv)
    selection = select_postprocessing(args.ckpt, args.device, args.precision, args.batch_size, args.cache_dir,
                                      args.min_gain, store=not args.dry_run, allow_tta=not args.no_tta)
    print(format_selection(selection))
    print("dry run: nothing stored" if args.dry_run else f"stored in {len(args.ckpt)} checkpoint(s)")
    return selection
