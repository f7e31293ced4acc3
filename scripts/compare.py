"""Compare two evaluations of the same slices, A minus B, with paired intervals over the patients.

    python scripts/compare.py runs/eval_new/per_image.csv runs/eval_shipped/per_image.csv --names new shipped
"""

from lightning_bts.errors import run_main
from lightning_bts.experiments.comparison import main

if __name__ == "__main__":
    run_main(main)
