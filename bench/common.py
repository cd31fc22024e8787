"""What the benchmarks share: the repository root, where results go, what the CPU is, and the
training-step helpers of bench/train_speed.py and bench/loss_speed.py.

A benchmark imports it as `from common import ...`: `python bench/x.py` puts bench/ first on
sys.path. The package itself (`seq2seq`) comes from the environment that runs the benchmarks
(scripts/setup_env.sh installs it, editable, into .venv). Importing this module loads the
standard library only; the helpers that need torch or seq2seq import them when called, so a
benchmark that only measures other processes does not carry them.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The model shape of the issue's comparison table (joint SentencePiece 8k, separate embeddings,
# untied output layer), pinned so that numbers stay comparable when the recipe's vocabulary changes.
ISSUE_SHAPE = ["tokenizer.vocab_size=8000", "tokenizer.joint=true", "model.share_embeddings=false",
               "model.decoder.tie_embeddings=false"]


def save_result(name: str, result: dict) -> None:
    """Write a benchmark's result to bench/results/<name>.json (the folder git ignores)."""
    out = ROOT / "bench/results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def cpu_name() -> str:
    """The CPU model, read here with the standard library (seq2seq.precision has the same, but
    importing it loads torch, which benchmarks of other processes do not carry)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_line() -> str:
    """What a benchmark prints first: the CPU and whether it has native bf16 (without it,
    bfloat16 on the CPU is emulated and slower than float32)."""
    from seq2seq import precision
    flag = precision.native_bf16(precision.cpu_flags())
    return f"CPU: {cpu_name()}; native bf16: {'yes (' + flag + ')' if flag else 'no'}"


# Runs a command and reports its peak RSS: ru_maxrss as wait4 reports it, the largest resident set
# the command (or a child it waited for) ever had, in KiB. Linux also counts in a process's
# ru_maxrss the memory of the process it was forked from, so the command is spawned by this bare
# interpreter (~10 MB) rather than by a benchmark that holds torch and a model.
LAUNCHER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Run `cmd` to its end: (wall seconds, peak RSS in bytes); a failure exits with its stderr."""
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        start = time.perf_counter()
        p = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(rss_file), *cmd], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode(errors='replace')[-2000:]}")
        return seconds, int(rss_file.read_text()) * 1024


def common_arguments(description: str) -> argparse.ArgumentParser:
    """The options bench/train_speed.py and bench/loss_speed.py share."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--recipe", default=str(ROOT / "recipes/multi30k_de_en.toml"))
    ap.add_argument("--data-dir", default=None, help="Multi30K (default: $SEQ2SEQ_DATA_DIR, data/multi30k)")
    ap.add_argument("--work", default=str(ROOT / "bench/results/work"), help="prepared data cache")
    ap.add_argument("--quick", action="store_true", help="fewer steps (< 3 minutes on 2 CPU cores)")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def setup(args: argparse.Namespace, n_batches: int, device):
    """The issue-shaped model (seed 0), its optimizer and n_batches real training batches."""
    import torch

    from seq2seq import config
    from seq2seq.batching import TokenBatchSampler, collate
    from seq2seq.model import build_model
    from seq2seq.prepare import prepare
    from seq2seq.train import make_optimizer

    torch.set_num_threads(args.threads)
    cfg = config.load(args.recipe, ISSUE_SHAPE)
    prepared = prepare(cfg, Path(args.work) / Path(args.recipe).stem, args.data_dir, log=lambda *a: None)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(prepared.tokenizers.src), len(prepared.tokenizers.tgt)).to(device)
    sampler = TokenBatchSampler(prepared.splits["train"].sizes(), cfg.train.batch_tokens, seed=1)
    batches = [collate(prepared.splits["train"], sampler.next_batch()).to(device) for _ in range(n_batches)]
    return cfg, model, make_optimizer(model, cfg), batches


def ours_step(model, batch):
    """The training loss as training computes it: `Seq2Seq.loss` (fused, chunked; seq2seq/loss.py)."""
    loss, _ = model.loss(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_out,
                         batch.tgt_mask, 0.1)
    return loss / batch.ntokens


def train_step(step_fn, model, optimizer, batch) -> None:
    """One full training step: forward, backward, clipping, Adam."""
    import torch

    loss = step_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def alternate(paths: dict, model, optimizer, batches, rounds: int, device) -> dict[str, float]:
    """Seconds each path spends on full training steps over `rounds` passes of the batches.
    The paths take turns batch by batch, so drift of the shared machine hits them alike."""
    model.train()
    seconds = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for batch in batches:
            for name, step_fn in paths.items():
                sync(device)
                start = time.perf_counter()
                train_step(step_fn, model, optimizer, batch)
                sync(device)
                seconds[name] += time.perf_counter() - start
    return seconds


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that a timer around it measures it."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
