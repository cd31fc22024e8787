"""Attention over encoder memory: additive (Bahdanau, "mlp"), Luong "dot" and "general".

Stateless: the keys are computed once per source by `keys()` and passed back in by the
caller (they live in the decoder's Memory), nothing per-batch is kept on the module.

Shapes: B batch, T query steps, S source length, Hq query size, Hm memory size, A key size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, kind: str, query_size: int, memory_size: int, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.key_proj = nn.Linear(memory_size, hidden, bias=False)
            self.query_proj = nn.Linear(query_size, hidden, bias=True)
            self.v = nn.Linear(hidden, 1, bias=False)
        elif kind == "general":
            self.key_proj = nn.Linear(memory_size, query_size, bias=False)
        elif kind != "dot":
            raise ValueError(f"unknown attention type {kind!r}")

    def keys(self, memory: Tensor) -> Tensor:
        """(B, S, Hm) -> (B, S, A): the memory-side projection, computed once per source
        (doubled for "mlp", which scores with sigmoid(2u): see forward)."""
        if self.kind == "dot":
            return memory
        return 2 * self.key_proj(memory) if self.kind == "mlp" else self.key_proj(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, T, Hq), keys (B, S, A), memory (B, S, Hm), mask (B, S) True at real tokens
        -> context (B, T, Hm), weights (B, T, S) summing to 1 over real source positions."""
        if self.kind == "mlp":
            # v.tanh(u) = 2 v.sigmoid(2u) - sum(v), and softmax ignores the constant: Bahdanau's weights,
            # but torch's sigmoid kernel is much faster than its tanh (bench/kernel_speed.py).
            u2 = (2 * self.query_proj(query))[:, :, None, :] + keys[:, None, :, :]  # (B, T, S, A) 2u
            scores = 2 * self.v(u2.sigmoid_()).squeeze(-1)                          # (B, T, S)
        else:
            scores = torch.bmm(query, keys.transpose(1, 2))                     # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, memory), weights
