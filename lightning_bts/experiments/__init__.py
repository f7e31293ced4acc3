"""Experiments built on training and evaluation: k-fold cross-validation and its report.

- ``runs``    the on-disk layout of a cross-validation run and :func:`collect` (read by the runner and the report)
- ``cv``      :func:`run_cv`: k folds x losses on ``train()``, resumable; each fold's last checkpoint scored
- ``stats``   t-intervals and paired tests across folds and slices
- ``report``  :func:`build_report`: tables, statistics and plots of a finished cross-validation
"""
