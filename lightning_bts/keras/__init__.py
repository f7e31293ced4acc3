"""The Keras original: its weight files, the reference model, and the parity checks against it.

- ``weights``          Keras weight files <-> :class:`~lightning_bts.models.UNet`, h5py only (imports models and errors
                       only, so training may import it: ``model.init_weights`` takes a Keras file)
- ``reference``        builds the original in Keras (TensorFlow imported lazily)
- ``checkpoint``       a Lightning checkpoint from Keras weights (builds a ``SegmentationModule``)
- ``parity_report``    :class:`Tolerances`, :class:`Check`, :class:`ParityReport`
- ``parity_checks``    forward pass, losses and metrics against Keras on the same weights and slices
- ``parity_training``  the training-trajectory check (Keras vs KerasAdam vs stock Adam)
- ``parity``           :func:`run_parity`: every check, in order (``scripts/validate_keras.py``)

Nothing here is imported on import of this package: TensorFlow and Keras stay unloaded until a check asks.
"""
