"""A model's decoding copy with its products in bf16 or int8 (`decode.precision`).

What changes is what beam search repeats at every step: the decoder's RNN cells, the attention's
query projection, the attentional layer (`combine`) and the output layer. They become
`LowLinear`s; the encoder (run once per sentence), embeddings, the bridge, the RNN states and
every elementwise formula stay float32, and so does the log-softmax that scores hypotheses.
(Under bf16 autocast the encoder's packed LSTM gave a sentence scores that moved by up to 0.09
with its batch companions; in float32 they do not move.)

int8: each weight row (output channel) has its own scale (max |w| / 127); at run time each
input row is quantized with its own scale, so a sentence's numbers never depend on the other
sentences in its batch. The product is int8 x int8 -> int32, exact, then scaled back. Inputs
that are concatenations ([x; h] of a cell, [top; context] of `combine`) are quantized part by
part, each with its own scales. The kernel is torch._int_mm; where torch lacks it, the same
integers are multiplied in float32 a slice of 1,024 columns at a time (exact: every partial sum
stays below 2^24).

The copy shares every unchanged parameter with the original model (no second float32 copy); the
low-precision tensors are buffers that move with the copy and are never saved in a checkpoint.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.decoder import StepGRU, StepLSTM, layer_inputs
from seq2seq.ensemble import Ensemble

EXACT_COLUMNS = 1024  # 127 * 127 * 1024 < 2^24: float32 holds such int8 dot products exactly


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, K) float -> (int8 (M, K), scale (M, 1)) with x ~ q * scale, one scale per row."""
    scale = x.abs().amax(1, keepdim=True).clamp_min_(1e-12).div_(127)  # (M, 1)
    # |x| * (1 / scale) <= 127 up to a rounding error far below 0.5: no clamp needed
    return (x * scale.reciprocal()).round_().to(torch.int8), scale


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) int8 @ b (K, N) int8 -> (M, N) int32."""
    if hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(a, b)
        except RuntimeError:  # no kernel for this device or shape: the exact float path below
            pass
    out = torch.zeros(a.size(0), b.size(1), dtype=torch.int32, device=a.device)
    for k in range(0, a.size(1), EXACT_COLUMNS):
        out += (a[:, k:k + EXACT_COLUMNS].float() @ b[k:k + EXACT_COLUMNS].float()).to(torch.int32)
    return out


class LowLinear(nn.Module):
    """y = x W^T + b with the product in bf16 or int8; x and y float32. `parts` are the sizes
    of the input's concatenated parts (int8 quantizes each part's rows with a scale of its own)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, precision: str, parts: list[int] | None = None):
        super().__init__()
        self.precision = precision
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        weight = weight.detach().float()
        if precision == "bfloat16":
            self.register_buffer("weight", weight.to(torch.bfloat16), persistent=False)   # (N, K)
            return
        self.bounds = [0]
        for n in parts or [weight.size(1)]:
            self.bounds.append(self.bounds[-1] + n)
        if self.bounds[-1] != weight.size(1):
            raise ValueError(f"parts {parts} do not add up to the {weight.size(1)} input columns")
        for i, (a, b) in enumerate(zip(self.bounds, self.bounds[1:])):
            q, s = quantize_rows(weight[:, a:b])                                  # (N, k), (N, 1)
            self.register_buffer(f"qweight{i}", q.t().contiguous(), persistent=False)   # (k, N)
            self.register_buffer(f"scale{i}", s.t().contiguous(), persistent=False)     # (1, N)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()                                       # (M, K)
        if self.precision == "bfloat16":
            y = F.linear(x.to(torch.bfloat16), self.weight).float()
        else:  # scaled in place: one (M, N) tensor per part
            y = None
            for i, (a, b) in enumerate(zip(self.bounds, self.bounds[1:])):
                q, sx = quantize_rows(x[:, a:b])
                part = int_mm(q, getattr(self, f"qweight{i}")).float().mul_(sx).mul_(getattr(self, f"scale{i}"))
                y = part if y is None else y.add_(part)                                # (M, N)
        if self.bias is not None:
            y = y.add_(self.bias)
        return y.reshape(*shape[:-1], y.size(-1))


class LowLSTM(nn.Module):
    """StepLSTM's interface (one layer, batch first, T steps) on LowLinear gate products.
    The cell's formulas are torch.lstm_cell's in float32, with tanh(x) computed as 2 sigmoid(2x) - 1
    (torch's CPU sigmoid is several times faster than its tanh): the gate rows are stored in the
    order i, f, o, g with g's doubled, so that one sigmoid gives all four gates."""

    def __init__(self, rnn: StepLSTM, precision: str, parts: list[int]):
        super().__init__()
        H = rnn.hidden_size
        order = torch.cat([torch.arange(2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])  # i f o g
        double = torch.ones(4 * H, 1)
        double[3 * H:] = 2                                                        # g's rows, exact in any format
        w_ih, w_hh = rnn.weight_ih_l0[order] * double, rnn.weight_hh_l0[order] * double   # (4H, K), (4H, H)
        bias = (rnn.bias_ih_l0 + rnn.bias_hh_l0)[order] * double[:, 0]
        self.ih = LowLinear(w_ih, bias, precision, parts)
        self.hh = LowLinear(w_hh, None, precision)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = hx[0][0], hx[1][0]                                                 # (B, H)
        outs = []
        for t in range(x.size(1)):
            i, f, o, g2 = self.ih(x[:, t]).add_(self.hh(h)).sigmoid_().chunk(4, 1)  # sigmoid(2g) for g
            c = torch.addcmul(f * c, i, g2.mul(2).sub_(1))                       # f c + i tanh(g)
            h = o * torch.sigmoid(2 * c).mul_(2).sub_(1)                          # o tanh(c)
            outs.append(h)
        return torch.stack(outs, 1), (h[None], c[None])


class LowGRU(nn.Module):
    """StepGRU's interface on LowLinear products; the elementwise formulas of torch.gru_cell."""

    def __init__(self, rnn: StepGRU, precision: str, parts: list[int]):
        super().__init__()
        self.ih = LowLinear(rnn.weight_ih_l0, rnn.bias_ih_l0, precision, parts)
        self.hh = LowLinear(rnn.weight_hh_l0, rnn.bias_hh_l0, precision)

    def forward(self, x: Tensor, hx: Tensor) -> tuple[Tensor, Tensor]:
        h = hx[0]                                                                  # (B, H)
        outs = []
        for t in range(x.size(1)):
            ir, iz, in_ = self.ih(x[:, t]).chunk(3, 1)
            hr, hz, hn = self.hh(h).chunk(3, 1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(in_ + r * hn) + z * h
            outs.append(h)
        return torch.stack(outs, 1), h[None]


@torch.no_grad()
def for_decoding(model: nn.Module, precision: str) -> nn.Module:
    """`model` itself for float32, else a decoding copy with bf16 or int8 products (see above)."""
    if precision == "float32":
        return model
    if precision not in ("bfloat16", "int8"):
        raise ValueError(f"unknown decoding precision {precision!r}")
    if isinstance(model, Ensemble):
        return Ensemble([for_decoding(m, precision) for m in model.models]).eval()
    shared = {id(p): p for p in model.parameters()}  # deepcopy copies the modules, not the weights
    out = copy.deepcopy(model, memo=shared).eval()
    dec = out.decoder
    dec.layers = nn.ModuleList((LowLSTM if isinstance(r, StepLSTM) else LowGRU)(r, precision, parts)
                               for r, parts in zip(dec.layers, layer_inputs(dec.cfg, dec.memory_size)))
    att = dec.attention
    if att.kind == "mlp":  # the other kinds project only the memory, once per sentence
        att.query_proj = LowLinear(att.query_proj.weight, att.query_proj.bias, precision)
    dec.combine = LowLinear(dec.combine.weight, dec.combine.bias, precision,
                            parts=[dec.cfg.hidden, dec.memory_size])                 # [top; context]
    dec.out = LowLinear(dec.out.weight, dec.out.bias, precision)
    return out
