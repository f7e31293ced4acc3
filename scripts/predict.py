"""Predict tumour masks for new MRI slices with trained checkpoints (see docs/inference.md).

    python scripts/predict.py --ckpt runs/focal_fold0/<version>/checkpoints/last.ckpt --input scans/ --output out/
    python scripts/predict.py --ckpt runs/focal_fold*/*/checkpoints/last.ckpt --input 'scans/*.png' --output out/ \
        --tta --overlays --save-probs --pixel-spacing 0.49
"""

from lightning_bts.errors import run_main
from lightning_bts.evaluation.predict_cli import main

if __name__ == "__main__":
    run_main(main)
