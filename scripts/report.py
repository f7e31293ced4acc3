"""Write the cross-validation report (Markdown, CSV, PNG) from scripts/cv.py's results folder.

    python scripts/report.py reports/cv_figshare
"""

from lightning_bts.errors import run_main
from lightning_bts.experiments.report import main

if __name__ == "__main__":
    run_main(main)
