"""``scripts/predict.py``: tumour masks for new scans with trained checkpoints (see docs/inference.md).

    python scripts/predict.py --input scans/ --output predictions/     # the shipped model
    python scripts/predict.py --ckpt RUN/checkpoints/last.ckpt --input scans/ --output predictions/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_bts.evaluation.predict_files import PROBABILITY_FORMATS, check_output_dir, find_images, predict_files
from lightning_bts.evaluation.predictor import PRECISIONS, Predictor
from lightning_bts.evaluation.settings import add_override_arguments
from lightning_bts.pretrained import DEFAULT_CHECKPOINT, default_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict brain-tumour masks for new MRI slices with trained checkpoints (one, or a fold "
        "ensemble averaged by probability). Preprocessing (skull stripping, size, channels) and the post-processing "
        "chosen on validation (scripts/select_postprocessing.py) are read from the checkpoint; masks are written at "
        "each input's original size.",
        epilog="Example: python scripts/predict.py --ckpt runs/focal_fold*/*/checkpoints/last.ckpt "
        "--input 'scans/*.png' --output predictions --tta --overlays --pixel-spacing 0.49",
    )
    parser.add_argument("--ckpt", nargs="+", default=None, metavar="PATH",
                        help="checkpoint(s); several = an ensemble (mean probability); default: the shipped model "
                        f"{DEFAULT_CHECKPOINT.parent.name}/{DEFAULT_CHECKPOINT.name} (see its MODEL_CARD.md)")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                        help="image files, folders of images, or quoted glob patterns (PNG/JPG/TIFF, 8-bit)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (must not hold any input)")
    add_override_arguments(parser)
    parser.add_argument("--precision", default="32-true", choices=tuple(PRECISIONS),
                        help="inference precision (default 32-true; bf16-mixed/16-mixed autocast)")
    parser.add_argument("--save-probs", nargs="?", const="png", choices=PROBABILITY_FORMATS, default=None,
                        help="also write probability maps: png (8-bit, 255 = 1.0; the default) or npy (float32)")
    parser.add_argument("--overlays", action="store_true", help="also write the inputs with the tumour drawn on")
    parser.add_argument("--pixel-spacing", nargs="+", type=float, metavar="MM", default=None,
                        help="mm per pixel of the input images: one value, or row and column spacing; "
                        "adds tumour_area_mm2 to predictions.csv")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, ... (default: cuda if present); "
                        "a GPU asked for but missing is an error")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable input instead of "
                        "skipping it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 when at least one slice was predicted, 1 if none.

    Raises:
        UserError: a bad checkpoint, input, output folder, device or option (``run_main`` prints it, exit 2).
    """
    args = build_parser().parse_args(argv)
    checkpoints = args.ckpt or [default_checkpoint()]
    files = find_images(args.input)
    check_output_dir(files, Path(args.output))  # before loading models: fail fast
    predictor = Predictor.from_checkpoints(checkpoints, device=args.device, precision=args.precision, tta=args.tta,
                                           postprocessing=args.postprocessing, threshold=args.threshold)
    summary = predict_files(predictor, files, args.output, batch_size=args.batch_size, save_probs=args.save_probs,
                            overlays=args.overlays, pixel_spacing=args.pixel_spacing, strict=args.strict,
                            progress=not args.quiet)
    members = f"{len(checkpoints)} checkpoints" if len(checkpoints) > 1 else f"checkpoint {checkpoints[0]}"
    print(f"predicted {len(summary.table)} slice(s) with {members} on {predictor.device}; "
          f"{predictor.settings.describe()}; {int((summary.table['tumour_pixels'] > 0).sum())} with tumour. "
          f"Table: {summary.csv_path}")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} unreadable file(s) (listed in {Path(args.output) / 'skipped.txt'}):",
              file=sys.stderr)
        for source, reason in summary.skipped:
            print(f"  {source}: {reason}", file=sys.stderr)
    return 0 if len(summary.table) else 1
