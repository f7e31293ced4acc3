"""Choose TTA and post-processing on the checkpoints' validation patients and store it in them (docs/inference.md).

    python scripts/select_postprocessing.py --ckpt runs/focal_fold0/<version>/checkpoints/last.ckpt
    python scripts/select_postprocessing.py --ckpt results/cv/runs/focal_fold*/cv/checkpoints/final.ckpt
"""

from lightning_bts.errors import run_main
from lightning_bts.evaluation.select_cli import main

if __name__ == "__main__":
    run_main(main)
