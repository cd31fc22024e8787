"""Dropout for the RNN stacks: nn.Dropout, with a faster mask where training runs in bf16 on a CPU.

torch's CPU dropout draws its keep-mask with `bernoulli_`, which costs about three times what
`torch.rand` does for the same tensor; once the products run in bf16 that shows
(bench/kernel_speed.py, AMD EPYC with avx512_bf16, 2 threads: dropout forward and backward 3.1x
faster, a whole bf16 input-feeding training step 1.085x). Under CPU bf16 autocast this
module keeps an element when a uniform draw in [0, 1) is >= p: the same Bernoulli(1 - p)
mask and the same 1 / (1 - p) scaling, drawn from another stretch of the same generator.
Everywhere else (float32, CUDA, evaluation) it is nn.Dropout exactly, so float32 training keeps
its random stream and its curves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dropout(nn.Dropout):
    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and 0 < self.p < 1 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        keep = torch.rand_like(x, dtype=torch.float32).ge_(self.p).mul_(1 / (1 - self.p))  # 0 or 1/(1-p)
        return x * keep.to(x.dtype)
