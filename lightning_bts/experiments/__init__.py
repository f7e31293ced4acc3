"""Experiments built on training and evaluation: k-fold cross-validation and its report, the recipe ablation.

- ``runs``    the on-disk layout of a cross-validation run and :func:`collect` (read by the runner and the report)
- ``cv``      :func:`run_cv`: k folds x losses on ``train()``, resumable; each fold's last checkpoint scored
- ``stats``   t-intervals and paired tests across folds and slices
- ``report``  :func:`build_report`: tables, statistics and plots of a finished cross-validation
- ``comparison``  scripts/compare.py: two evaluations of the same slices, A minus B, with paired intervals
  over the patients and per-slice and per-patient tallies
- ``ablation_rows``, ``ablation_report``, ``ablation``   scripts/ablation.py: the best
  recipe's ingredients added one row at a time (configs/ablation/best_recipe.yaml), each trained for the same
  time and scored once on the held-out test patients
"""
