"""Keep the memory of freed tensors inside the process, so that a CPU step does not page-fault it in again.

PyTorch's CPU tensors come from ``malloc``. glibc's ``malloc`` serves every block above its mmap threshold (at
most 32 MiB) with a fresh ``mmap`` and returns it to the kernel with ``munmap`` when it is freed, and it trims
the free top of its heap. A training step frees its activations at the end of backward and allocates them
again in the next forward, so the kernel maps and zero-fills every 4 KiB page of them again, every step (at
256x256 and batch 16 one level-0 activation is 64 MiB). With ``mmap`` off and trimming off, freed blocks stay
in the heap and the next step reuses them. TensorFlow pools CPU memory in an allocator of its own, which was
part of Keras' lead in ``benchmarks/cpu_vs_keras.py``.

Measured on a 2-core AMD EPYC (fp32, batch 16, the benchmark's training step): 5.5 -> 8.9 images/s at
256x256 and 31.9 -> 35.9 at 128x128; the peak resident memory of that process rose from 2652 to 3039 MiB at
256x256, still below Keras' 3399. The price is that the process keeps its peak memory until it exits, which
is what a training or prediction process does anyway, and that the heap may hold a few freed blocks of a size
before it reuses them (a loop of 64 MiB tensors settles 512 MiB higher after 8 rounds and stays there; a
training step's resident memory was flat over 200 steps).

glibc's own environment variables (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``) win when set, and
``LIGHTNING_BTS_KEEP_FREED_MEMORY=0`` turns this off. Elsewhere (macOS, Windows, musl) nothing changes.
Imports nothing of the package, so any layer may use it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

OPT_OUT_VARIABLE = "LIGHTNING_BTS_KEEP_FREED_MEMORY"
GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only a free top above 2 GiB


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed blocks for reuse (no ``mmap``, no trimming); once per process.

    Returns whether the setting is in force: False where the C library is not glibc, where
    ``LIGHTNING_BTS_KEEP_FREED_MEMORY=0``, and where glibc's own variables are set (they win; they are in force
    from the process' start). Called by ``train()`` and by the ``Predictor``: whatever runs the network.
    """
    if os.environ.get(OPT_OUT_VARIABLE, "1") == "0":
        return False
    if any(name in os.environ for name in GLIBC_VARIABLES):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process' own symbols: glibc's mallopt, without searching for the library
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
