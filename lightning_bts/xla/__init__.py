"""torch_xla for Lightning: the PJRT accelerator, TPU probes and graph cuts (:mod:`lightning_bts.xla.accelerator`).

Knows no training loop: the training layer imports it, never the other way round. The compile checker, which runs a
training, is :mod:`lightning_bts.training.xla_check`.
"""
