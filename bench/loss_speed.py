"""The fused, chunked output layer + loss vs the plain one, in whole training steps, in one process.

    python bench/loss_speed.py [--quick] [--recipe recipes/multi30k_de_en.toml]

(a) fused: `Seq2Seq.loss`, the output projection, log-softmax and gradient chunk by chunk
    (seq2seq/loss.py), as training runs it.
(b) plain: `Seq2Seq.forward` to the (N, V) logits of the real target positions, then
    `smoothed_cross_entropy` and autograd.
The same model as bench/train_speed.py (bench/common.py's ISSUE_SHAPE: 8k joint vocabulary,
untied output layer), the same Multi30K batches, forward + backward + Adam. The two take turns
batch by batch so that drift of the shared machine hits both alike; the ratio is of their totals. Each path's step
memory is the growth of peak resident memory over two steps, in a fresh subprocess.

Last line: fused_loss_speedup=<a/b> fused_tok_per_s=<a> plain_tok_per_s=<b>
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import torch

from common import alternate, common_arguments, ours_step, save_result, setup

from seq2seq.loss import smoothed_cross_entropy


def plain_step(model, batch):
    logits = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_mask)  # (N, V)
    loss, _ = smoothed_cross_entropy(logits, batch.tgt_out[batch.tgt_mask], 0.1)
    return loss / batch.ntokens


def peak_growth_gib(args: argparse.Namespace, path: str) -> float:
    """Peak resident memory of two training steps over the memory before them, in a fresh process."""
    cmd = [sys.executable, __file__, "--peak-of", path, "--recipe", args.recipe, "--work", args.work,
           "--threads", str(args.threads)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])


def _rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2 ** 30


def main() -> None:
    ap = common_arguments(__doc__.split("\n\n")[0])
    ap.add_argument("--peak-of", choices=("fused", "plain"), help=argparse.SUPPRESS)  # peak_growth_gib's child
    args = ap.parse_args()
    device = torch.device("cpu")
    _, model, optimizer, batches = setup(args, 6, device)
    steps = {"fused": ours_step, "plain": plain_step}
    if args.peak_of:
        before = _rss_gib()
        alternate({args.peak_of: steps[args.peak_of]}, model, optimizer, batches[:2], 1, device)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20 - before)  # ru_maxrss is KiB
        return
    rounds = 3 if args.quick else 8
    alternate(steps, model, optimizer, batches[:1], 1, device)  # warm-up
    seconds = alternate(steps, model, optimizer, batches[1:], rounds, device)
    tokens = sum(b.ntokens for b in batches[1:])
    fused, plain = rounds * tokens / seconds["fused"], rounds * tokens / seconds["plain"]
    peak = {name: peak_growth_gib(args, name) for name in steps}
    result = {"recipe": args.recipe, "threads": args.threads, "rounds": rounds,
              "target_tokens_per_round": tokens, "fused_tok_per_s": fused, "plain_tok_per_s": plain,
              "fused_loss_speedup": fused / plain, "fused_step_peak_growth_gib": peak["fused"],
              "plain_step_peak_growth_gib": peak["plain"]}
    print(f"{'loss':<8}{'tok/s':>10}{'step peak memory GiB':>22}")
    print(f"{'fused':<8}{fused:>10,.0f}{peak['fused']:>22.2f}")
    print(f"{'plain':<8}{plain:>10,.0f}{peak['plain']:>22.2f}")
    save_result("loss_speed", result)
    print(f"fused_loss_speedup={fused / plain:.2f} fused_tok_per_s={fused:.0f} plain_tok_per_s={plain:.0f}")


if __name__ == "__main__":
    main()
