"""Dropout whose CPU masks cost a fraction of ``torch.bernoulli_``.

Profiling a CPU training step of the paper's U-Net (``reports/benchmark_cpu.md``) put ``aten::bernoulli_``, the
mask of ``nn.Dropout``, at 20% of an fp32 step and 38% of a bf16 one: it draws one 32-bit random number per
element (about 5 ns each here), while everything else in the step got faster with bf16. This module draws
64-bit words and splits each into four 16-bit lanes, keeping 15 bits per lane (``random_`` on int64 leaves the
top bit of every word 0), so the mask needs a quarter of the draws. The keep probability is ``1 - p`` rounded
to a multiple of 2^-15 (for the paper's rates an error below 2e-5) and kept outputs are scaled by its inverse,
as inverted dropout does. Off the CPU it is ``nn.Dropout`` (GPU and XLA have fast generators of their own).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LANE_BITS = 15
_LANE_VALUES = 1 << _LANE_BITS


class FastDropout(nn.Dropout):
    """``nn.Dropout(p)`` with masks from 15-bit lanes of 64-bit random words on the CPU (see the module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p == 1:
            return F.dropout(x, self.p, training=True, inplace=self.inplace)
        drop_threshold = round(self.p * _LANE_VALUES)  # lane < threshold: dropped
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_()
        lanes = words.view(torch.int16)[: x.numel()]
        keep = (lanes & (_LANE_VALUES - 1)) >= drop_threshold
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            n, c, h, w = x.shape
            keep = keep.view(n, h, w, c).permute(0, 3, 1, 2)  # same strides as x: no layout conversion
        else:
            keep = keep.view(x.shape)
        scale = _LANE_VALUES / (_LANE_VALUES - drop_threshold)
        return x * (keep.to(x.dtype) * scale)
