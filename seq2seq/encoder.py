"""Stacked (bi)directional RNN encoder over packed input.

Packing keeps padding out of the backward direction: outputs for real tokens do not
change when a batch is padded further. The layers run one by one on the packed data so
that dropout and residual connections can sit between them.

Shapes: B batch, S source length, E embedding, H hidden (output size; each direction
H/2 when bidirectional), L layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import EncoderConfig
from seq2seq.dropout import Dropout


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig, embedding: nn.Embedding):
        super().__init__()
        self.cfg = cfg
        self.embed = embedding
        self.dropout = Dropout(cfg.dropout)
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        directions = 2 if cfg.bidirectional else 1
        self.layers = nn.ModuleList(
            rnn(cfg.embedding if i == 0 else cfg.hidden, cfg.hidden // directions,
                batch_first=True, bidirectional=cfg.bidirectional)
            for i in range(cfg.layers))

    def forward(self, src: Tensor, src_lengths: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
        """src (B, S), src_lengths (B,) -> memory (B, S, H) (zeros at padding),
        final hidden states per layer [(B, H)] * L and, for LSTMs, final cells [(B, H)] * L."""
        x = self.dropout(self.embed(src))                                 # (B, S, E)
        packed = pack_padded_sequence(x, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        data = packed.data                                                # (sum of lengths, E)
        finals_h, finals_c = [], []
        for i, rnn in enumerate(self.layers):
            layer_in = self.dropout(data) if i > 0 else data
            out, state = rnn(packed._replace(data=layer_in))
            # the residual adds the clean input, as the decoder's does (GNMT): dropout is on the branch
            data = out.data + data if (self.cfg.residual and i > 0) else out.data
            h, c = state if isinstance(state, tuple) else (state, None)  # (directions, B, H/dirs)
            finals_h.append(_join_directions(h))
            if c is not None:
                finals_c.append(_join_directions(c))
        memory, _ = pad_packed_sequence(packed._replace(data=data), batch_first=True,
                                        total_length=src.size(1))
        return memory, finals_h, (finals_c or None)


def _join_directions(state: Tensor) -> Tensor:
    """(directions, B, H/directions) -> (B, H): forward and backward side by side."""
    return torch.cat(list(state), dim=-1)
