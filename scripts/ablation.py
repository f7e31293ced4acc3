"""The best recipe's ablation: each ingredient added in turn, equal budgets, scored on the test patients (resumable).

    python scripts/ablation.py --minutes 15 --best-run runs/best_recipe/best_cpu_seed42/VERSION
    python scripts/ablation.py --dry-run        # each trained row's fit.py command

See lightning_bts/experiments/ablation.py and configs/ablation/best_recipe.yaml.
"""

from lightning_bts.errors import run_main
from lightning_bts.experiments.ablation import main

if __name__ == "__main__":
    run_main(main)
