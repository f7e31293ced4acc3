"""``scripts/predict.py``: tumour masks for new scans with trained checkpoints (see docs/inference.md).

    python scripts/predict.py --input scans/ --output predictions/     # the shipped model
    python scripts/predict.py --ckpt RUN/checkpoints/last.ckpt --input scans/ --output predictions/
    python scripts/predict.py --input scan.nii.gz --output out/        # a NIfTI volume -> out/masks/scan.nii.gz
    python scripts/predict.py --input dicom_series/ --output out/      # a DICOM series -> out/masks/dicom_series.nii.gz
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_bts.data.volume import PLANES
from lightning_bts.errors import ConfigError
from lightning_bts.evaluation.backends import add_backend_argument
from lightning_bts.evaluation.predict_files import PROBABILITY_FORMATS, check_output_dir, predict_files
from lightning_bts.evaluation.predict_volumes import find_inputs, predict_volumes
from lightning_bts.evaluation.predictor import PRECISIONS, Predictor
from lightning_bts.evaluation.settings import add_override_arguments
from lightning_bts.pretrained import DEFAULT_CHECKPOINT, default_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Predict brain-tumour masks for new MRI slices or scans with trained checkpoints (one, or a "
        "fold ensemble averaged by probability). Preprocessing (intensity mapping, skull stripping, size, channels) "
        "and the post-processing chosen on validation (scripts/select_postprocessing.py) are read from the "
        "checkpoint; masks are written at each input's original size: PNG for image files, NIfTI (.nii.gz, on the "
        "scan's grid) for NIfTI volumes and DICOM series.",
        epilog="Example: python scripts/predict.py --ckpt runs/focal_fold*/*/checkpoints/last.ckpt "
        "--input 'scans/*.png' --output predictions --tta --overlays --pixel-spacing 0.49",
    )
    parser.add_argument("--ckpt", nargs="+", default=None, metavar="PATH",
                        help="checkpoint(s); several = an ensemble (mean probability); default: the shipped model "
                        f"{DEFAULT_CHECKPOINT.parent.name}/{DEFAULT_CHECKPOINT.name} (see its MODEL_CARD.md)")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH_OR_GLOB",
                        help="image files (PNG/JPG/TIFF, 8-bit), NIfTI volumes (.nii, .nii.gz), DICOM files, a "
                        "folder holding one DICOM series, folders of images or NIfTI files, or quoted glob patterns; "
                        "images and scans in separate runs")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (must not hold any input)")
    add_override_arguments(parser)
    parser.add_argument("--precision", default="32-true", choices=tuple(PRECISIONS),
                        help="inference precision (default 32-true; bf16-mixed/16-mixed autocast)")
    add_backend_argument(parser)
    parser.add_argument("--save-probs", nargs="?", const="png", choices=PROBABILITY_FORMATS, default=None,
                        help="also write probability maps: png (8-bit, 255 = 1.0; the default) or npy (float32)")
    parser.add_argument("--overlays", action="store_true", help="also write the inputs with the tumour drawn on")
    parser.add_argument("--pixel-spacing", nargs="+", type=float, metavar="MM", default=None,
                        help="mm per pixel of the input images: one value, or row and column spacing; "
                        "adds tumour_area_mm2 to predictions.csv")
    parser.add_argument("--axis", default="acquisition", choices=PLANES,
                        help="scans: the plane the volume is cut into slices along (default: the plane it was "
                        "acquired in)")
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
    files, scans = find_inputs(args.input)
    if files and scans:
        raise ConfigError(f"--input names both image files ({files[0]}, ...) and scans ({scans[0]}, ...); predict "
                          "them in separate runs")
    if scans:
        _check_scan_options(args)
    check_output_dir(files or scans, Path(args.output))  # before loading models: fail fast
    predictor = Predictor.from_checkpoints(checkpoints, device=args.device, precision=args.precision, tta=args.tta,
                                           postprocessing=args.postprocessing, threshold=args.threshold,
                                           backend=args.backend)
    if scans:
        summary = predict_volumes(predictor, scans, args.output, args.axis, args.batch_size, not args.quiet)
    else:
        summary = predict_files(predictor, files, args.output, batch_size=args.batch_size, save_probs=args.save_probs,
                                overlays=args.overlays, pixel_spacing=args.pixel_spacing, strict=args.strict,
                                progress=not args.quiet)
    if scans:
        print(f"segmented {len(scans)} scan(s), {len(summary.table)} slice(s); masks in {Path(args.output) / 'masks'}"
              f", tumour volumes in {Path(args.output) / 'volumes.csv'}")
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


def _check_scan_options(args: argparse.Namespace) -> None:
    """Options of image files that scans do not take: refused rather than silently ignored."""
    given = [name for name, value in (("--save-probs", args.save_probs), ("--overlays", args.overlays),
                                      ("--pixel-spacing", args.pixel_spacing)) if value]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to image files, not to NIfTI/DICOM scans (their spacing comes "
                          "from the scan's header; their masks are NIfTI files to overlay in a viewer)")
