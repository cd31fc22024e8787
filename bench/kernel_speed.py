"""Component choices against their plain alternatives, taking turns in one process.

    python bench/kernel_speed.py [--quick] [--recipe recipes/multi30k_de_en.toml]

adam       one update of all parameters of the default model (bench/common.py's ISSUE_SHAPE):
           torch's fused Adam kernel as seq2seq.optim.FusedAdam calls it (make_optimizer) vs
           torch.optim.Adam's foreach implementation.
attention  additive attention as seq2seq/attention.py computes it, v . sigmoid(2u) in place, vs
           the textbook v . tanh(u) with the same weights, in two shapes:
             decode: one beam-search step, 350 rows x 15 source positions (about the average
                     beam-5 step on test_2016_flickr), no gradients;
             train:  forward + backward for 125 sentences x 16 target x 16 source positions.
dropout    under CPU bf16 autocast, seq2seq.dropout.Dropout (mask from torch.rand) vs nn.Dropout
           (bernoulli_), p = 0.3: forward + backward of one decoder layer's outputs (125 x 16 x
           256), and whole bf16 training steps of OpenNMT-py's architecture (input feeding, 4
           encoder layers; 125 sentences x 16 source x 16 target pieces, 8k vocabulary).

Last line: adam_fused_speedup=<r> attention_decode_speedup=<r> attention_train_speedup=<r>
  dropout_speedup=<r> dropout_input_feed_step_speedup=<r>
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from functools import partial

import torch
from torch import nn

from common import ISSUE_SHAPE, ROOT, cpu_line, save_result

from seq2seq import config
from seq2seq.attention import Attention
from seq2seq.dropout import Dropout
from seq2seq.model import Objective, build_model
from seq2seq.optim import FusedAdam


def textbook(att: Attention, query, keys, memory, mask):
    """Bahdanau's additive attention written out: softmax(v . tanh(W q + k)) over real positions,
    with keys = U memory (not `Attention.keys`, which are doubled for its sigmoid form)."""
    scores = att.v(torch.tanh(att.query_proj(query)[:, :, None, :] + keys[:, None, :, :])).squeeze(-1)
    weights = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), dim=-1)  # (B, T, S)
    return torch.bmm(weights, memory), weights


def take_turns(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Seconds per call of each function; they alternate, `reps` calls at a time."""
    for fn in fns.values():
        fn()
    seconds = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            seconds[name] += time.perf_counter() - start
    return {name: s / (rounds * reps) for name, s in seconds.items()}


def adam(cfg: config.Config, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    params = list(build_model(cfg.model, 8000, 8000).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = {"fused": FusedAdam(params, lr=1e-3), "foreach": torch.optim.Adam(params, lr=1e-3, foreach=True)}
    return take_turns({kind: opt.step for kind, opt in optimizers.items()}, rounds, 5)


def attention(cfg: config.Config, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    a, h = cfg.model.attention, cfg.model.decoder.hidden
    att = Attention("mlp", h, cfg.model.encoder.hidden, a.hidden)
    out = {}
    for shape, (rows, steps, src) in {"decode": (350, 1, 15), "train": (125, 16, 16)}.items():
        query = torch.randn(rows, steps, h, requires_grad=shape == "train")        # (B, T, H)
        memory = torch.randn(rows, src, cfg.model.encoder.hidden, requires_grad=shape == "train")
        mask = torch.arange(src)[None, :] < torch.randint(src // 2, src + 1, (rows, 1))  # (B, S)

        def run(forward, key_fn):
            if shape == "decode":
                keys = key_fn(memory).detach()  # decoding computes them once per sentence
                return torch.no_grad()(lambda: forward(query, keys, memory, mask))
            return lambda: sum(t.sum() for t in forward(query, key_fn(memory), memory, mask)).backward()

        timed = take_turns({"ours": run(att, att.keys), "textbook": run(partial(textbook, att), att.key_proj)},
                           rounds, 20 if shape == "decode" else 3)
        out.update({f"{shape}_{name}": s for name, s in timed.items()})
    return out


def dropout(cfg: config.Config, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    kinds = {"ours": Dropout(0.3), "plain": nn.Dropout(0.3)}
    x = torch.randn(125, 16, cfg.model.decoder.hidden, requires_grad=True)  # (B, T, H)

    def layer(module):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = module(x)
            y.sum().backward()
        return run

    out = take_turns({k: layer(m) for k, m in kinds.items()}, rounds, 20)
    peer = replace(cfg.model, encoder=replace(cfg.model.encoder, layers=4),
                   decoder=replace(cfg.model.decoder, attention_feed="input_feed"))  # OpenNMT-py's architecture
    model = build_model(peer, 8000, 8000)
    objective = Objective(model)
    B, S, T = 125, 16, 16
    lengths = torch.randint(S // 2, S + 1, (B,))
    lengths[0] = S
    batch = (torch.randint(4, 8000, (B, S)), lengths, torch.arange(S) < lengths[:, None],
             torch.randint(4, 8000, (B, T)), torch.randint(4, 8000, (B, T)), torch.ones(B, T, dtype=torch.bool))

    def step(module):
        def run():
            model.encoder.dropout = model.decoder.dropout = module
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = objective(*batch, 0.1, 1.0)
            model.zero_grad(set_to_none=True)
            loss.backward()
        return run

    out |= {f"step_{k}": v for k, v in take_turns({k: step(m) for k, m in kinds.items()}, rounds, 2).items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes/multi30k_de_en.toml"))
    ap.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute on 2 CPU cores)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line(), f"{args.threads} threads, torch {torch.__version__}", flush=True)
    cfg = config.load(args.recipe, ISSUE_SHAPE)
    rounds = 4 if args.quick else 12
    a, t, d = adam(cfg, rounds), attention(cfg, rounds), dropout(cfg, rounds)
    result = {"cpu": cpu_line(), "recipe": args.recipe, "threads": args.threads, "rounds": rounds,
              "adam_fused_ms": a["fused"] * 1e3, "adam_foreach_ms": a["foreach"] * 1e3,
              "adam_fused_speedup": a["foreach"] / a["fused"],
              **{f"attention_{k}_ms": v * 1e3 for k, v in t.items()},
              "attention_decode_speedup": t["decode_textbook"] / t["decode_ours"],
              "attention_train_speedup": t["train_textbook"] / t["train_ours"],
              **{f"dropout_{k}_ms": v * 1e3 for k, v in d.items()},
              "dropout_speedup": d["plain"] / d["ours"],
              "dropout_input_feed_step_speedup": d["step_plain"] / d["step_ours"]}
    print(f"{'component':<40}{'ours ms':>9}{'plain ms':>10}{'speedup':>9}")
    for label, ours, plain in (("Adam update: fused vs foreach", a["fused"], a["foreach"]),
                               ("attention, decode step: sigmoid/tanh", t["decode_ours"], t["decode_textbook"]),
                               ("attention, train fwd+bwd: sigmoid/tanh", t["train_ours"], t["train_textbook"]),
                               ("bf16 dropout fwd+bwd: rand/bernoulli", d["ours"], d["plain"]),
                               ("bf16 input-feeding step: the same", d["step_ours"], d["step_plain"])):
        print(f"{label:<40}{ours * 1e3:>9.2f}{plain * 1e3:>10.2f}{plain / ours:>9.2f}")
    save_result("kernel_speed", result)
    print(f"adam_fused_speedup={result['adam_fused_speedup']:.2f} "
          f"attention_decode_speedup={result['attention_decode_speedup']:.2f} "
          f"attention_train_speedup={result['attention_train_speedup']:.2f} "
          f"dropout_speedup={result['dropout_speedup']:.2f} "
          f"dropout_input_feed_step_speedup={result['dropout_input_feed_step_speedup']:.3f}")


if __name__ == "__main__":
    main()
