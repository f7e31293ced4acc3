"""Evaluate checkpoint(s) on a dataset folder, without training; see lightning_bts/evaluation/evaluate_cli.py.

    python scripts/evaluate.py --ckpt PATH [PATH ...] [--part test | --data-root DIR] --out DIR
"""

from lightning_bts.errors import run_main
from lightning_bts.evaluation.evaluate_cli import main

if __name__ == "__main__":
    run_main(main)
