"""torch_xla for Lightning: TPUs, and the same code on XLA's CPU (or CUDA) backend. The only module that imports
torch_xla, and only inside functions, so the package imports without it.

Two accelerator names reach XLA:

* ``tpu``: Lightning's own ``XLAAccelerator``. It counts TPU chips on the PCI bus (and asks GCE metadata), so it
  is available on TPU VMs only.
* ``xla``: :class:`PJRTAccelerator`, registered here. It runs on whatever ``PJRT_DEVICE`` names (``CPU``,
  ``TPU``, ``CUDA``; torch_xla picks TPU or CPU when unset), which is how CI exercises the XLA code path on CPU.

Either way Lightning picks its XLA strategies: one device -> ``SingleDeviceXLAStrategy``, all devices
(``--devices auto``) -> ``XLAStrategy`` (one process per TPU chip; on the CPU backend, one process with a thread
per ``CPU_NUM_DEVICES`` device). Precision on XLA: ``32-true``, ``bf16-true`` or ``16-true`` (Lightning's
``XLAPrecision``; it has no ``bf16-mixed``).

Hygiene, measured with :class:`CompileMonitor` (``scripts/xla_check.py``): after the first epoch (train and
validation, whose last partial batch compiles one extra shape once) no new graph compiles. That needs fixed
shapes (the DataModule drops the last partial training batch), no host syncs inside a step (no ``.item()``,
no SciPy: :class:`~lightning_bts.metrics.HausdorffMetrics` is skipped on XLA by the module), epoch-level
``self.log`` only, and a graph cut after every evaluation batch (:class:`XLAGraphCuts`), which
``SingleDeviceXLAStrategy`` does not do by itself (it only cuts after ``optimizer.step``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.accelerators.xla import XLAAccelerator as FabricXLAAccelerator
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.accelerators.xla import XLAAccelerator
from pytorch_lightning.callbacks import Callback

from lightning_bts.errors import ConfigError

XLA_NAME = "xla"
XLA_ACCELERATORS = ("tpu", XLA_NAME)  # accelerator names that run on XLA


def pjrt_device_count() -> int:
    """Devices of this host for the current ``PJRT_DEVICE``, counted without starting the XLA runtime.

    ``xr.global_runtime_device_count()`` would start it, and a started runtime makes ``xmp.spawn`` (the
    multi-device launcher) refuse to run; so count as the runtime will: ``CPU_NUM_DEVICES`` (default 1) on CPU,
    the PCI chips on TPU, ``GPU_NUM_DEVICES`` or the visible GPUs on CUDA.
    """
    from torch_xla import runtime as xr  # importing torch_xla sets PJRT_DEVICE to TPU or CPU when unset

    device = (xr.device_type() or "").upper()
    if device == "CPU":
        return int(os.environ.get("CPU_NUM_DEVICES", "1"))
    if device == "TPU":
        from torch_xla._internal import tpu

        return tpu.num_available_devices()
    if device in ("CUDA", "GPU"):
        return int(os.environ.get("GPU_NUM_DEVICES", torch.cuda.device_count()))
    return xr.global_runtime_device_count()


class PJRTAccelerator(XLAAccelerator):
    """Lightning's XLA accelerator on any PJRT device, not only TPU chips (``--accelerator xla``).

    Lightning's ``XLAAccelerator`` is reused whole (strategies, precision, checkpoint I/O); only availability,
    device counting and device parsing change, since its versions probe for TPU hardware.
    """

    @staticmethod
    def auto_device_count() -> int:
        try:
            return pjrt_device_count()
        except (ImportError, RuntimeError, ValueError, OSError):
            return 0

    @staticmethod
    def is_available() -> bool:
        return PJRTAccelerator.auto_device_count() > 0

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> int | list[int]:
        """``1``, all devices (``'auto'`` or their count), or one device's index as ``[i]`` / ``"i,"``."""
        count = PJRTAccelerator.auto_device_count()
        parsed: Any = devices
        if isinstance(devices, str):
            text = devices.strip()
            if text == "auto":
                parsed = count
            elif text.lstrip("-").isdigit():
                parsed = int(text)
            else:
                parsed = [int(part) for part in text.split(",") if part.strip()]
        if isinstance(parsed, int) and not isinstance(parsed, bool) and parsed in {1, count}:
            return parsed
        if isinstance(parsed, (list, tuple)) and len(parsed) == 1 and 0 <= int(parsed[0]) < count:
            return [int(parsed[0])]
        raise ConfigError(
            f"devices={devices!r} is not valid for XLA ({os.environ.get('PJRT_DEVICE', 'PJRT_DEVICE unset')}, "
            f"{count} device(s)): expected 1, {count} ('auto') or a single index [0..{count - 1}]"
        )

    @staticmethod
    def get_parallel_devices(devices: int | list[int]) -> list[torch.device]:
        devices = PJRTAccelerator.parse_devices(devices)
        if isinstance(devices, int):
            return [torch.device("xla", index) for index in range(devices)]
        return [torch.device("xla", devices[0])]

    @staticmethod
    def name() -> str:
        return XLA_NAME

    @classmethod
    def register_accelerators(cls, accelerator_registry: Any) -> None:
        accelerator_registry.register(cls.name(), cls, description=cls.__name__)


GOOGLE_PCI_VENDOR = "0x1ae0"  # how torch_xla itself finds TPU chips (torch_xla._internal.tpu)


def tpu_chips_on_pci_bus() -> int:
    """Google devices on this host's PCI bus: every TPU chip is one; 0 on any machine without a TPU."""
    chips = 0
    for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"):
        try:
            chips += vendor.read_text().strip() == GOOGLE_PCI_VENDOR
        except OSError:
            continue
    return chips


def skip_tpu_probe_without_tpu_chips() -> None:
    """Let Lightning learn "no TPU" without importing torch_xla, on hosts with no TPU chip.

    Every Trainer asks Lightning's ``XLAAccelerator.is_available()`` (for its "TPU available" line and for
    ``accelerator="auto"``), and Lightning answers by importing torch_xla whenever it is installed: seconds of
    start-up and warnings about TensorFlow and PJRT_DEVICE in a run that never uses XLA. torch_xla counts TPU
    chips on the PCI bus, so where there are none its answer is known to be False. ``--accelerator xla`` is not
    affected: :class:`PJRTAccelerator` answers for itself.
    """
    if tpu_chips_on_pci_bus() == 0:
        FabricXLAAccelerator.is_available = staticmethod(_no_tpu)  # Lightning's XLAAccelerator inherits it


def _no_tpu() -> bool:
    return False


def register_xla_accelerator() -> None:
    """Registers :class:`PJRTAccelerator` as ``"xla"`` in Lightning's accelerator registry (idempotent)."""
    if XLA_NAME not in AcceleratorRegistry:
        PJRTAccelerator.register_accelerators(AcceleratorRegistry)


def xla_trainer_overrides(accelerator: Any) -> tuple[dict[str, Any], list[Callback]]:
    """Trainer arguments and callbacks for a run on ``accelerator`` (a name or an Accelerator instance).

    ``"xla"`` becomes a :class:`PJRTAccelerator` instance: Lightning picks its XLA strategies for an
    ``XLAAccelerator`` instance or the name ``"tpu"`` only, so a registered name alone would get a CPU strategy.
    Every XLA run gets :class:`XLAGraphCuts`. Not XLA: nothing.
    """
    if accelerator == XLA_NAME:
        register_xla_accelerator()
        return {"accelerator": PJRTAccelerator()}, [XLAGraphCuts()]
    if accelerator == "tpu" or isinstance(accelerator, XLAAccelerator):
        return {}, [XLAGraphCuts()]
    return {}, []


def mark_step() -> None:
    """Cuts the lazy graph here: runs what is pending as one graph (nothing to run: no graph, no compile)."""
    import torch_xla.core.xla_model as xm

    xm.mark_step()


class XLAGraphCuts(Callback):
    """Cuts the lazy graph after each evaluation batch and at the start of each training epoch.

    ``SingleDeviceXLAStrategy`` cuts only after ``optimizer.step``, so an evaluation epoch would otherwise trace
    into one graph unrolled over all its batches (compiled again whenever the batch count changes);
    ``XLAStrategy``'s ``MpDeviceLoader`` cuts per batch already, and a second cut finds nothing to run. The cut
    at epoch start runs the previous epoch's leftovers (Lightning's epoch-mean of ``train/loss``, metric resets)
    as their own small graph; folded into the first training step instead, they would make that step a new graph
    compiled once more in the second epoch.
    """

    def on_train_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        mark_step()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        mark_step()

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        mark_step()

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        mark_step()

