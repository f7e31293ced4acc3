"""Evaluate checkpoint(s) on a dataset folder, without training; see lightning_bts/evaluation.py.

    python scripts/evaluate.py --ckpt PATH [PATH ...] --data-root DIR --out DIR
"""

from lightning_bts.evaluation import main

if __name__ == "__main__":
    main()
