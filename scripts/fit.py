"""Train the paper's U-Net. With no arguments: a few minutes on the shipped sample, on CPU.

    python scripts/fit.py --help
    python scripts/fit.py --config configs/paper_focal.yaml --data.root ../shared/data/figshare_brain_tumor
"""

from lightning_bts.errors import run_main
from lightning_bts.training.config import parse_config
from lightning_bts.training.train import train


def main() -> None:
    result = train(parse_config())
    dice = result.metrics.get("val/dice")
    print(f"\nfinal val/dice (pooled): {dice:.4f}" if dice is not None else "\nno validation metrics logged")
    print(f"logs (TensorBoard, CSV metrics.csv, config.yaml, splits.json): {result.log_dir}")
    print(f"checkpoints: last {result.last_checkpoint}, best by val/dice {result.best_checkpoint}")
    if result.preview is not None:
        print(f"validation slices, true (green) and predicted (red) outlines: {result.preview}")


if __name__ == "__main__":
    run_main(main)
