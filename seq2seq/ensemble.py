"""Ensembles: several models decoding as one, averaging their per-step probabilities.

An Ensemble offers the same small decoding interface as Seq2Seq (encode, step, reorder,
select), so greedy and beam search run over it unchanged. Its memory and state are tuples
with one entry per model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seq2seq.model import Seq2Seq


class Ensemble(nn.Module):
    def __init__(self, models: list[Seq2Seq]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def encode(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> tuple[tuple, tuple]:
        pairs = [m.encode(src, src_lengths, src_mask) for m in self.models]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    def step(self, tokens: Tensor, states: tuple, memories: tuple) -> tuple[Tensor, tuple, Tensor]:
        """log of the mean of the models' probabilities (B, V); attention averaged (B, S)."""
        outs = [m.step(tokens, s, mem) for m, s, mem in zip(self.models, states, memories)]
        log_probs = torch.logsumexp(torch.stack([o[0] for o in outs]), dim=0) - math.log(len(outs))
        attn = torch.stack([o[2] for o in outs]).mean(dim=0)
        return log_probs, tuple(o[1] for o in outs), attn

    def reorder(self, states: tuple, index: Tensor) -> tuple:
        return tuple(m.reorder(s, index) for m, s in zip(self.models, states))

    def select(self, memories: tuple, index: Tensor) -> tuple:
        return tuple(m.select(mem, index) for m, mem in zip(self.models, memories))
