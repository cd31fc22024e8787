"""Training throughput: our fused path vs a step-by-step reference, in one process.

    python bench/train_speed.py [--quick] [--recipe recipes/multi30k_de_en.toml] [--device cuda]

(a) ours: `Seq2Seq.loss` as training runs it (gnmt feed: one fused RNN call per layer,
    one batched attention product, output projection and loss fused, chunk by chunk, on real
    target positions only: seq2seq/loss.py).
(b) reference: the same weights run one target step at a time, with per-step attention
    and per-step output projection over the whole padded batch (what OpenNMT-py and
    Joey NMT do).
Both do full training steps (forward, backward, clipping, Adam) on the same real Multi30K
batches, taking turns batch by batch so that drift of the shared machine hits both alike.
The model is the recipe's with the shape of the issue's comparison table pinned (`ISSUE_SHAPE` in
bench/common.py: joint SentencePiece 8k, separate embeddings, untied output layer), so the numbers stay
comparable when the recipe's vocabulary changes. Target tokens exclude padding. The model's
floating-point operations per target token are counted from the layer sizes (see
`flops_per_target_token`) and compared with this machine's float32 matrix-multiply throughput,
measured in the same run with the same thread count (the best of square products of size 1024
and 2048, before and after the training steps).

Last line: train_speedup=<a/b> flop_utilization=<fraction> tok_per_s=<a>
"""

from __future__ import annotations

import resource
import time

import torch

from common import alternate, common_arguments, ours_step, save_result, setup, sync

from seq2seq import config


def matmul_flops(threads: int, device: torch.device) -> float:
    """Best float32 square matmul throughput (FLOP/s) over n = 1024 and 2048."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b
        reps = 20 if device.type == "cpu" else 200
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
    return best


def flops_per_target_token(cfg: config.Config, vocab: int, src_per_tgt: float, src_len: float) -> float:
    """Forward multiply-adds x 2, times 3 for forward + backward (backward costs ~2x forward).

    Per target token: each decoder LSTM/GRU layer 2*G*H*(in + H) (G = 4 gates for LSTM, 3 for
    GRU); additive attention 2*H*A (query) + 2*S*A (score: add, tanh, dot with v) + 2*S*Hm
    (context); combine 2*(H + Hm)*H; output projection 2*H*V. Per source token (scaled by
    source/target tokens): each encoder direction 2*G*h*(in + h) with h = H/directions, plus
    the attention key projection 2*Hm*A. Elementwise work (gates, softmax) is not counted.
    """
    e, d, a = cfg.model.encoder, cfg.model.decoder, cfg.model.attention
    gates = lambda cell: 4 if cell == "lstm" else 3  # noqa: E731
    dirs = 2 if e.bidirectional else 1
    h = e.hidden // dirs
    enc = sum(dirs * 2 * gates(e.cell) * h * ((e.embedding if i == 0 else e.hidden) + h) for i in range(e.layers))
    enc += 2 * e.hidden * a.hidden if a.type != "dot" else 0
    ctx = e.hidden if d.attention_feed == "gnmt" else 0
    ins = [d.embedding + (d.hidden if d.attention_feed == "input_feed" else 0)] + [d.hidden + ctx] * (d.layers - 1)
    dec = sum(2 * gates(d.cell) * d.hidden * (n + d.hidden) for n in ins)
    att = (2 * d.hidden * a.hidden + 2 * src_len * a.hidden if a.type == "mlp" else 2 * src_len * e.hidden) \
        + 2 * src_len * e.hidden
    out = 2 * (d.hidden + e.hidden) * d.hidden + 2 * d.hidden * vocab
    return 3 * (dec + att + out + src_per_tgt * enc)


def reference_step(model, batch):
    """One target step at a time: per-step attention and output projection (padding included)."""
    memory, state = model.encode(batch.src, batch.src_lengths, batch.src_mask)
    total = 0.0
    for t in range(batch.tgt_in.size(1)):
        logits, state, _ = model.decoder.step(batch.tgt_in[:, t], state, memory)  # (B, V)
        log_probs = torch.log_softmax(logits, dim=-1)
        nll = -log_probs.gather(1, batch.tgt_out[:, t:t + 1]).squeeze(1)
        smooth = -log_probs.mean(-1)
        total = total + (((0.9 * nll + 0.1 * smooth) * batch.tgt_mask[:, t]).sum())
    return total / batch.ntokens


def main() -> None:
    ap = common_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    device = torch.device(args.device)
    n_batches, rounds = (6, 2) if args.quick else (12, 3)
    cfg, model, optimizer, batches = setup(args, n_batches, device)
    vocab = model.decoder.out.out_features
    tgt_tokens = sum(b.ntokens for b in batches)
    src_tokens = sum(int(b.src_mask.sum()) for b in batches)
    src_len = src_tokens / sum(b.src.size(0) for b in batches)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    peak = matmul_flops(args.threads, device)
    with autocast:
        alternate({"ours": ours_step}, model, optimizer, batches, 1, device)  # warm-up, and our peak memory
        rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # GiB (ru_maxrss is KiB)
        gpu_mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
        alternate({"reference": reference_step}, model, optimizer, batches[:1], 1, device)  # warm-up
        seconds = alternate({"ours": ours_step, "reference": reference_step}, model, optimizer, batches, rounds, device)
    peak = max(peak, matmul_flops(args.threads, device))  # best of before and after
    steps = rounds * len(batches)
    ours, ref = rounds * tgt_tokens / seconds["ours"], rounds * tgt_tokens / seconds["reference"]
    flops = flops_per_target_token(cfg, vocab, src_tokens / tgt_tokens, src_len)
    result = {
        "recipe": args.recipe, "device": args.device, "threads": args.threads, "batches": len(batches),
        "rounds": rounds, "batch_tokens": cfg.train.batch_tokens, "mean_target_tokens_per_batch": tgt_tokens / len(batches),
        "ours_tok_per_s": ours, "ours_s_per_step": seconds["ours"] / steps,
        "reference_tok_per_s": ref, "reference_s_per_step": seconds["reference"] / steps,
        "train_speedup": ours / ref, "flops_per_target_token": flops,
        "achieved_flop_per_s": flops * ours, "matmul_flop_per_s": peak,
        "flop_utilization": flops * ours / peak, "peak_rss_gib_training": rss_ours, "gpu_max_allocated_gib": gpu_mem,
    }
    print(f"{'path':<12}{'tok/s':>10}{'s/step':>9}")
    print(f"{'ours':<12}{ours:>10,.0f}{result['ours_s_per_step']:>9.3f}")
    print(f"{'reference':<12}{ref:>10,.0f}{result['reference_s_per_step']:>9.3f}")
    print(f"model: {flops / 1e6:.1f} MFLOP per target token (fwd+bwd); achieved {flops * ours / 1e9:.1f} GFLOP/s; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s; peak RSS while training {rss_ours:.2f} GiB"
          + (f"; GPU memory {gpu_mem:.2f} GiB" if gpu_mem is not None else ""))
    save_result(f"train_speed{'_cuda' if device.type == 'cuda' else ''}", result)
    print(f"train_speedup={ours / ref:.2f} flop_utilization={flops * ours / peak:.2f} tok_per_s={ours:.0f}")


if __name__ == "__main__":
    main()
