"""Seq2Seq = embeddings + encoder + bridge + decoder + output projection.

Shapes: B batch, S source length, T target length, E embedding, H hidden, V vocab,
K beam, L layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq.config import ModelConfig
from seq2seq.decoder import Decoder, DecoderState, Memory, reorder_state, select_memory
from seq2seq.encoder import Encoder
from seq2seq.loss import smoothed_cross_entropy
from seq2seq.tokenizer import PAD


class Bridge(nn.Module):
    """Decoder initial state from the encoder's final states.

    The final states of all encoder layers are concatenated and projected to every
    decoder layer, so encoder and decoder depths may differ. `kind = "none"` gives zeros.
    """

    def __init__(self, kind: str, enc_layers: int, enc_hidden: int, dec_layers: int,
                 dec_hidden: int, lstm: bool):
        super().__init__()
        self.kind, self.dec_layers, self.dec_hidden, self.lstm = kind, dec_layers, dec_hidden, lstm
        if kind == "linear":
            self.h = nn.Linear(enc_layers * enc_hidden, dec_layers * dec_hidden)
            self.c = nn.Linear(enc_layers * enc_hidden, dec_layers * dec_hidden) if lstm else None

    def forward(self, finals_h: list[Tensor], finals_c: list[Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """[(B, He)] * Le -> hidden (L, B, H), cell (L, B, H) or None."""
        B = finals_h[0].size(0)
        shape = (B, self.dec_layers, self.dec_hidden)
        if self.kind == "none":
            zeros = finals_h[0].new_zeros(shape).transpose(0, 1).contiguous()
            return zeros, (zeros.clone() if self.lstm else None)
        h = torch.tanh(self.h(torch.cat(finals_h, -1))).view(shape).transpose(0, 1).contiguous()
        if not self.lstm:
            return h, None
        c_in = torch.cat(finals_c if finals_c is not None else finals_h, -1)
        return h, self.c(c_in).view(shape).transpose(0, 1).contiguous()


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab: int, tgt_vocab: int, init: bool = True):
        """init=False skips the uniform initialisation, for weights that are loaded next."""
        super().__init__()
        self.cfg = cfg
        enc, dec = cfg.encoder, cfg.decoder
        src_embed = nn.Embedding(src_vocab, enc.embedding, padding_idx=PAD)
        tgt_embed = src_embed if cfg.share_embeddings else nn.Embedding(tgt_vocab, dec.embedding, padding_idx=PAD)
        self.encoder = Encoder(enc, src_embed)
        self.bridge = Bridge(dec.bridge, enc.layers, enc.hidden, dec.layers, dec.hidden, dec.cell == "lstm")
        self.decoder = Decoder(dec, cfg.attention, enc.hidden, tgt_embed, tgt_vocab)
        if init:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)
        with torch.no_grad():
            self.encoder.embed.weight[PAD].zero_()
            self.decoder.embed.weight[PAD].zero_()

    def encode(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor) -> tuple[Memory, DecoderState]:
        """src (B, S) -> the decoder's memory and initial state."""
        values, finals_h, finals_c = self.encoder(src, src_lengths)      # (B, S, H)
        memory = Memory(values, self.decoder.attention.keys(values), src_mask)
        hidden, cell = self.bridge(finals_h, finals_c)
        return memory, DecoderState(hidden, cell, self.decoder.initial_feed(src.size(0), values))

    def forward(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor,
                tgt_mask: Tensor | None = None, teacher_forcing: float = 1.0) -> Tensor:
        """Training forward pass -> logits (B, T, V), or (N, V) for the N real target
        positions when `tgt_mask` is given (the output projection skips padding).
        teacher_forcing < 1 is scheduled sampling on the step-by-step path."""
        memory, state = self.encode(src, src_lengths, src_mask)
        if teacher_forcing < 1.0:
            logits = self._sampled(tgt_in, state, memory, teacher_forcing)
            return logits if tgt_mask is None else logits[tgt_mask]
        o, _ = self.decoder(tgt_in, state, memory)                        # (B, T, H)
        return self.decoder.logits(o if tgt_mask is None else o[tgt_mask])

    def loss(self, src: Tensor, src_lengths: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_out: Tensor,
             tgt_mask: Tensor, smoothing: float, teacher_forcing: float = 1.0) -> tuple[Tensor, Tensor]:
        """Training and validation: (label-smoothed loss sum, NLL sum) over the real target tokens.
        Teacher forcing projects and scores the decoder's outputs chunk by chunk (seq2seq.loss)."""
        target = tgt_out[tgt_mask]                                        # (N,)
        if teacher_forcing < 1.0:
            logits = self(src, src_lengths, src_mask, tgt_in, tgt_mask, teacher_forcing)  # (N, V)
            return smoothed_cross_entropy(logits, target, smoothing)
        memory, state = self.encode(src, src_lengths, src_mask)
        o, _ = self.decoder(tgt_in, state, memory)                        # (B, T, H)
        return self.decoder.loss(o[tgt_mask], target, smoothing)

    def _sampled(self, tgt_in: Tensor, state: DecoderState, memory: Memory, ratio: float) -> Tensor:
        """Each input token is the gold one with probability `ratio`, else the model's own
        greedy prediction from the previous step. -> logits (B, T, V)."""
        tokens, outs = tgt_in[:, 0], []
        for t in range(tgt_in.size(1)):
            logits, state, _ = self.decoder.step(tokens, state, memory)
            outs.append(logits)
            if t + 1 < tgt_in.size(1):
                use_gold = torch.rand(tokens.shape, device=tokens.device) < ratio
                tokens = torch.where(use_gold, tgt_in[:, t + 1], logits.argmax(-1))
        return torch.stack(outs, 1)

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, DecoderState, Tensor]:
        """tokens (B,) -> log_probs (B, V), new state, attention (B, S)."""
        logits, state, attn = self.decoder.step(tokens, state, memory)
        return torch.log_softmax(logits.float(), dim=-1), state, attn

    @staticmethod
    def reorder(state: DecoderState, index: Tensor) -> DecoderState:
        return reorder_state(state, index)

    @staticmethod
    def select(memory: Memory, index: Tensor) -> Memory:
        return select_memory(memory, index)


class Objective(nn.Module):
    """`Seq2Seq.loss` as a module's forward: DistributedDataParallel syncs gradients through
    the forward of the module it wraps, so training calls the loss through this."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return self.model.loss(*args, **kwargs)


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, init: bool = True) -> Seq2Seq:
    return Seq2Seq(cfg, src_vocab, tgt_vocab, init)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def summary(model: Seq2Seq) -> str:
    """Architecture with parameter counts (printed at the start of training)."""
    lines = []
    shared = {"target embedding": model.cfg.share_embeddings}  # counted once, under the source embedding
    for name, module in [("source embedding", model.encoder.embed), ("encoder", model.encoder.layers),
                         ("bridge", model.bridge), ("target embedding", model.decoder.embed),
                         ("decoder", model.decoder.layers), ("attention", model.decoder.attention),
                         ("output", nn.ModuleList([model.decoder.combine, model.decoder.out]))]:
        note = " (shared with the source embedding)" if shared.get(name) else ""
        if name == "output" and model.cfg.decoder.tie_embeddings:
            note = f" (incl. {model.decoder.out.weight.numel():,} tied to the target embedding)"
        lines.append(f"  {name:<17} {count_parameters(module):>11,}{note}")
    enc, dec = model.cfg.encoder, model.cfg.decoder
    head = (f"Seq2Seq: encoder {enc.layers}x{'bi' if enc.bidirectional else 'uni'}-{enc.cell.upper()} {enc.hidden}, "
            f"decoder {dec.layers}x{dec.cell.upper()} {dec.hidden} (residual {dec.residual}, "
            f"attention {model.cfg.attention.type}/{dec.attention_feed})")
    return "\n".join([head, *lines, f"  {'total':<17} {count_parameters(model):>11,}"])
