"""k-fold cross-validation of focal vs BCE (resumable), then optionally the report; see lightning_bts/experiments/cv.py.

    python scripts/cv.py --out reports/cv_sample --report --config configs/quick_cpu.yaml --trainer.max_epochs 5
"""

from lightning_bts.errors import run_main
from lightning_bts.experiments.cv import main

if __name__ == "__main__":
    run_main(main)
