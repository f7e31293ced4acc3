"""Fault injection for the Ray tests (sweeps and cross-validation): Lightning callbacks that make a run fail.

Each callback class is local to its function, so cloudpickle sends it by value to the Ray workers, which then
need not import the test modules.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pytorch_lightning import Callback


def crash_once(marker: Path) -> Callback:
    """The first run to finish a validation epoch raises once, after the callbacks before it ran (a Tune trial has
    then reported and saved the checkpoint its retry resumes from); in a multi-worker run rank 0 raises. Once
    across processes: the first to create ``marker`` raises."""

    class CrashOnce(Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            raise RuntimeError(f"injected failure ({marker}); Ray should retry this run")

    return CrashOnce()


def fail_always(attempts: Path | None = None, error: type[Exception] = RuntimeError) -> Callback:
    """Every run fails as training starts, with ``error``; each attempt leaves a file in ``attempts`` (so a test
    can count Ray's retries)."""

    class FailAlways(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            if attempts is not None:
                attempts.mkdir(exist_ok=True)
                (attempts / f"{os.getpid()}_{time.monotonic_ns()}").touch()
            raise error("injected permanent failure")

    return FailAlways()
