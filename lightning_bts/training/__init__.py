"""Training: the LightningModule, its optimiser and schedules, the shared LightningCLI and ``train()``.

Modules, imports going down this list (each may import the ones below it, and models, losses, metrics, data, xla):

- ``xla_check``        :func:`run_xla_check`: a short training with a :class:`CompileMonitor` (``scripts/xla_check.py``)
- ``train``            :func:`train`: fit a parsed config, return a :class:`TrainResult` (fit, cv, tune, benchmarks)
- ``config``           :func:`parse_config`: fit.py's arguments -> a config object; check and dump one
- ``cli``              :class:`BTSCLI`: the LightningCLI every training entry point shares; default callbacks
- ``console``, ``preview``   the run header and quieter logs; validation previews in TensorBoard
- ``checkpoints``      a trained model and its preprocessing from a checkpoint (what evaluation starts from)
- ``module``           :class:`SegmentationModule`: network + loss + optimiser/schedule + EMA + metrics
- ``optim``, ``schedules``   KerasAdam and ``build_optimizer``; warm-up, cosine/poly, plateau
- ``checkpoint_file``  a checkpoint file as plain data: read (``weights_only``) and checked, one entry rewritten

Nothing is imported on import of this package, so ``import lightning_bts.training.optim`` stays light.
"""
