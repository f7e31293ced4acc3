"""Export a checkpoint to ONNX or TorchScript, verified against PyTorch (see docs/inference.md).

    python scripts/export.py --ckpt runs/focal_fold0/<version>/checkpoints/last.ckpt --output model.onnx
    python scripts/export.py --ckpt runs/focal_fold0/<version>/checkpoints/last.ckpt --output model.pt
"""

from lightning_bts.errors import run_main
from lightning_bts.evaluation.export import main

if __name__ == "__main__":
    run_main(main)
