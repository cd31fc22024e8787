"""Stacked unidirectional RNN decoder with residual connections and attention.

One function, `_run`, computes the stack for T steps. The teacher-forced path calls it
once over the whole target (gnmt and top feeds: one fused RNN call per layer and one
batched attention product) or once per step (input feeding); decoding calls it with
T = 1 for each step. Both paths therefore share every weight and every formula.

attention_feed:
  gnmt        layer 1's outputs query the attention; the context joins the inputs of
              layers 2..L and the output layer.
  top         the top layer's outputs query the attention (no context inside the stack).
  input_feed  Luong: the previous step's attentional vector joins layer 1's input;
              attention is queried by the top layer.
The attentional vector o = tanh(W [top; context]) feeds the vocabulary projection.

residual:
  gnmt   layer l >= residual_from (1-based) adds its input to its output; dropout sits on the
         branch into the layer, the residual adds the clean input (GNMT; the encoder does the same).
  dense  each layer's input is the sum of all lower layers' outputs (Britz et al.'s ResD);
         the stack's output is the sum of all layers' outputs.
  none   plain stack.

Shapes: B batch (or batch * beam), T target steps, S source length, E embedding,
H hidden, Hm memory size, V vocabulary, L layers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from seq2seq.attention import Attention
from seq2seq.config import AttentionConfig, DecoderConfig
from seq2seq.dropout import Dropout
from seq2seq.loss import linear_cross_entropy


class DecoderState(NamedTuple):
    """The recurrent state: everything that changes from step to step."""

    hidden: Tensor         # (L, B, H)
    cell: Tensor | None    # (L, B, H) for LSTMs, None for GRUs
    feed: Tensor | None    # (B, H) previous attentional vector (input_feed), else None


class Memory(NamedTuple):
    """What the decoder attends to; fixed for a source sentence."""

    values: Tensor   # (B, S, Hm) encoder outputs
    keys: Tensor     # (B, S, A) attention keys, computed once
    mask: Tensor     # (B, S) bool, True at real source tokens


def reorder_state(state: DecoderState, index: Tensor) -> DecoderState:
    """Row i of the new state is row index[i] of the old one (beam search)."""
    return DecoderState(
        state.hidden.index_select(1, index),
        None if state.cell is None else state.cell.index_select(1, index),
        None if state.feed is None else state.feed.index_select(0, index))


def select_memory(memory: Memory, index: Tensor) -> Memory:
    """Row i of the new memory is row index[i] of the old one: tiling for beams, dropping finished sentences."""
    return Memory(*(t.index_select(0, index) for t in memory))


def layer_inputs(cfg: DecoderConfig, memory_size: int) -> list[list[int]]:
    """Each layer's input as the sizes of its concatenated parts: layer 1 takes [embedding;
    previous attentional vector] with input feeding, else [embedding]; the layers above take
    [layer below; context] with the gnmt feed, else [layer below]."""
    first = [cfg.embedding] + ([cfg.hidden] if cfg.attention_feed == "input_feed" else [])
    above = [cfg.hidden] + ([memory_size] if cfg.attention_feed == "gnmt" else [])
    return [first] + [above] * (cfg.layers - 1)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, att: AttentionConfig, memory_size: int,
                 embedding: nn.Embedding, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.embed = embedding
        self.dropout = Dropout(cfg.dropout)
        rnn = StepLSTM if cfg.cell == "lstm" else StepGRU
        H = cfg.hidden
        self.memory_size = memory_size
        self.layers = nn.ModuleList(rnn(sum(parts), H, batch_first=True) for parts in layer_inputs(cfg, memory_size))
        self.attention = Attention(att.type, H, memory_size, att.hidden)
        self.combine = nn.Linear(H + memory_size, H)
        self.out = nn.Linear(H, vocab_size)
        if cfg.tie_embeddings:
            self.out.weight = self.embed.weight

    def initial_feed(self, batch: int, like: Tensor) -> Tensor | None:
        if self.cfg.attention_feed != "input_feed":
            return None
        return like.new_zeros(batch, self.cfg.hidden)

    def forward(self, tgt_in: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, Tensor]:
        """Teacher-forced: tgt_in (B, T) -> attentional vectors (B, T, H), attention (B, T, S).
        `logits()` projects them and `loss()` scores them; the caller first drops padding positions."""
        emb = self.dropout(self.embed(tgt_in))                            # (B, T, E)
        if self.cfg.attention_feed != "input_feed":
            o, _, attn = self._run(emb, state, memory)
        else:
            outs, attns = [], []
            for t in range(emb.size(1)):
                o_t, state, a_t = self._run(emb[:, t:t + 1], state, memory)
                outs.append(o_t)
                attns.append(a_t)
            o, attn = torch.cat(outs, 1), torch.cat(attns, 1)
        return o, attn

    def logits(self, o: Tensor) -> Tensor:
        """(..., H) -> (..., V)"""
        return self.out(self.dropout(o))

    def loss(self, o: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
        """o (N, H), target (N,) -> (label-smoothed loss sum, NLL sum) of `logits(o)`,
        computed chunk by chunk without the (N, V) logits (seq2seq.loss)."""
        return linear_cross_entropy(self.dropout(o), self.out.weight, self.out.bias, target, smoothing)

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState, Tensor]:
        """One step: tokens (B,) -> logits (B, V), new state, attention (B, S)."""
        emb = self.dropout(self.embed(tokens[:, None]))                   # (B, 1, E)
        o, state, attn = self._run(emb, state, memory)
        return self.logits(o[:, 0]), state, attn[:, 0]

    def _run(self, emb: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState, Tensor]:
        """The stack over T steps: emb (B, T, E) -> attentional vectors (B, T, H)."""
        cfg = self.cfg
        x = emb if state.feed is None else torch.cat([emb, state.feed[:, None, :]], -1)
        context = attn = summed = None
        hs, cs = [], []
        for i, rnn in enumerate(self.layers):
            layer_in = x
            if i > 0:
                layer_in = self.dropout(x)
                if cfg.attention_feed == "gnmt":
                    layer_in = torch.cat([layer_in, context], -1)
            hx = state.hidden[i:i + 1]                                    # (1, B, H)
            y, new = rnn(layer_in, hx if state.cell is None else (hx, state.cell[i:i + 1]))
            h, c = new if isinstance(new, tuple) else (new, None)
            hs.append(h)
            cs.append(c)
            if cfg.residual == "dense":
                summed = y if summed is None else summed + y
                y = summed
            elif cfg.residual == "gnmt" and i > 0 and i + 1 >= cfg.residual_from:
                y = y + x
            x = y                                                         # (B, T, H)
            if i == 0 and cfg.attention_feed == "gnmt":
                context, attn = self.attention(x, memory.keys, memory.values, memory.mask)
        if cfg.attention_feed != "gnmt":
            context, attn = self.attention(x, memory.keys, memory.values, memory.mask)
        o = torch.tanh(self.combine(torch.cat([x, context], -1)))        # (B, T, H)
        new_state = DecoderState(
            torch.cat(hs, 0), None if state.cell is None else torch.cat(cs, 0),
            o[:, -1] if cfg.attention_feed == "input_feed" else None)
        return o, new_state, attn



class StepLSTM(nn.LSTM):
    """nn.LSTM (one layer, batch first) that computes a single step with the LSTM cell kernel.
    Same weights and formulas; at one step the sequence kernel pays a fixed cost per call, and on
    CPU the cell kernel is about 2x faster at beam-search batch sizes (160 rows, 4 layers)."""

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if x.size(1) != 1:
            return super().forward(x, hx)
        h, c = torch.lstm_cell(x[:, 0], (hx[0][0], hx[1][0]), self.weight_ih_l0, self.weight_hh_l0,
                               self.bias_ih_l0, self.bias_hh_l0)                 # (B, H) each
        return h[:, None], (h[None], c[None])


class StepGRU(nn.GRU):
    """nn.GRU (one layer, batch first) that computes a single step with the GRU cell kernel."""

    def forward(self, x: Tensor, hx: Tensor) -> tuple[Tensor, Tensor]:
        if x.size(1) != 1:
            return super().forward(x, hx)
        h = torch.gru_cell(x[:, 0], hx[0], self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0)
        return h[:, None], h[None]
