"""Short fit on XLA that reports graph compilations per epoch, compile time and time per step.

    PJRT_DEVICE=CPU python scripts/xla_check.py                   # 3 epochs on the sample, 64x64, XLA's CPU backend
    PJRT_DEVICE=TPU python scripts/xla_check.py --image_size 256  # on a TPU VM
    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 python scripts/xla_check.py --devices auto   # multi-device strategy

Extra arguments after ``--`` go to the training CLI (e.g. ``-- --data.root ../shared/data/figshare_brain_tumor``).
The last line is ``compiles_after_warmup=<int> steps=<int> step_ms=<float>``: graphs compiled after the first
epoch (0 means fixed shapes and no host syncs in the step) and the mean step time after it.
"""

import argparse
import tempfile
from pathlib import Path

from lightning_bts.errors import run_main
from lightning_bts.training.xla_check import run_xla_check, xla_check_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--devices", default="1", help="1, 'auto' (all devices: XLAStrategy) or an index list.")
    parser.add_argument("--output_dir", default=None, help="Run folder (default: a temporary one, removed after).")
    parser.add_argument("extra", nargs="*", help="More training CLI arguments (after --).")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        output_dir = options.output_dir or scratch
        config = xla_check_config(options.epochs, options.image_size, options.devices, output_dir,
                                  options.batch_size, options.extra)
        report, result = run_xla_check(config, Path(output_dir) / "xla_compiles.json")
        print(f"final val/dice: {result.metrics.get('val/dice', float('nan')):.4f}")
        for line in report.lines():
            print(line)


if __name__ == "__main__":
    run_main(main)
