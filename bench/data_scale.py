"""The data path at scale: `prepare` and the first training steps on 29k, 290k and 2.9M pairs.

    python bench/data_scale.py [--quick] [--data-dir DIR] [--sizes 29000 290000 2900000]

Corpora are Multi30K training pairs recombined (pair k joins two random Multi30K pairs, source
with source and target with target), so the lines look like real text at any size; validation
and test are Multi30K's. Each size runs recipes/wmt16_en_ro.toml's data path (corpus = "files",
joint BPE of 8,000 pieces) with the CPU recipe's model and its data.max_len = 60 (so that every
size has the same longest batches: the attention's memory grows with the longest source, and a
larger corpus has more of the rare long pairs), every command in its own process:

  prepare          from scratch: SentencePiece (on a sample) + encoding; wall time, peak RSS
  prepare encode   again with the tokenizer kept and the cache removed: the data path alone
  spm_encode       the library's own command-line encoder (Debian's sentencepiece package) on
                   the same training lines, two processes on two halves (2 cores): the floor
  cache            bytes of the training split's arrays per token (source + target pieces)
  train            50 steps: seconds from the process start to the first step done, peak RSS
  torchrun         (the smallest and the largest size, when that is 1M pairs or more) two ranks on
                   CPU (gloo): the ranks' summed PSS (torchrun's own launcher process apart),
                   against one process's PSS (the corpus sits once in the page cache, shared by the
                   ranks), and the largest against the smallest; the issue's bound, 1.2x one
                   process + the model's training state (weights, gradients, two Adam moments),
                   beside what any second process costs at least: `import torch` + that state

--quick runs the first two sizes (about 3 minutes on 2 cores). Last line:
prepare_rss_gib=<largest> prepare_vs_spm=<ratio> train_rss_ratio=<largest/smallest> first_step_s=<largest>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import LAUNCHER, ROOT, save_result

from seq2seq import config, corpus
from seq2seq.evaluate import hardware

CLI = [sys.executable, "-m", "seq2seq.cli"]
STEPS = 50


def make_corpus(n: int, out: Path, data_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """n recombined Multi30K pairs as plain text (reused when already there)."""
    src, tgt = out / "train.de", out / "train.en"
    done = out / "done"
    if done.exists() and done.read_text() == str(n):
        return src, tgt
    out.mkdir(parents=True, exist_ok=True)
    de = corpus.read_lines(data_dir / "train.de.gz")
    en = corpus.read_lines(data_dir / "train.en.gz")
    rng = random.Random(seed)
    with open(src, "w", encoding="utf-8") as fs, open(tgt, "w", encoding="utf-8") as ft:
        for start in range(0, n, 10_000):
            picks = [(rng.randrange(len(de)), rng.randrange(len(de))) for _ in range(min(10_000, n - start))]
            fs.writelines(f"{de[a]} {de[b]}\n" for a, b in picks)
            ft.writelines(f"{en[a]} {en[b]}\n" for a, b in picks)
    done.write_text(str(n))
    return src, tgt


def overrides(src: Path, tgt: Path, data_dir: Path) -> list[str]:
    """recipes/wmt16_en_ro.toml's data and tokenizer on the generated files, the CPU recipe's model."""
    cpu = config.to_dict(config.load(ROOT / "recipes/multi30k_de_en_cpu.toml"))
    sets = [f'data.train=["{src}", "{tgt}"]',
            f'data.valid=["{data_dir / "val.de.gz"}", "{data_dir / "val.en.gz"}"]',
            f'data.test={{ test_2016_flickr = ["{data_dir / "test_2016_flickr.de.gz"}", '
            f'"{data_dir / "test_2016_flickr.en.gz"}"] }}',
            "tokenizer.type='bpe'", "tokenizer.vocab_size=8000", "data.max_len=60",
            f"train.max_steps={STEPS}", "train.log_every=1", f"train.valid_every={STEPS}", "train.threads=2",
            "train.max_epochs=0", "train.batch_tokens=2000"]
    for section in ("encoder", "decoder", "attention"):
        for key, value in cpu["model"][section].items():
            sets.append(f"model.{section}.{key}={json.dumps(value)}")
    sets.append(f"model.share_embeddings={json.dumps(cpu['model']['share_embeddings'])}")
    return [a for s in sets for a in ("--set", s)]


# The peak RSS of a measured command: see LAUNCHER in bench/common.py.
PSS_EVERY = 0.5  # seconds between samples of the process tree's PSS (light on 2 shared cores)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PssSampler:
    """Every PSS_EVERY seconds, the summed PSS (proportional set size: shared pages divided among
    the processes that map them) of the command `launcher` runs and of the command's descendants,
    and of the descendants alone (torchrun's ranks without torchrun's own launcher); the largest
    sums seen are kept. PSS has no high-water mark, so a peak shorter than a sample interval can
    be missed; the launcher itself is not counted."""

    def __init__(self, launcher: int):
        self.launcher, self.peak, self.peak_children, self._stop = launcher, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> tuple[list[int], list[int]]:
        """(the command: the launcher's children, the command's descendants)."""
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        top = [p for p, parent in parents.items() if parent == self.launcher]
        descendants, frontier = [], top
        while frontier:
            frontier = [p for p, parent in parents.items() if parent in frontier]
            descendants += frontier
        return top, descendants

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            top, descendants = self._tree()
            children = sum(map(self._pss, descendants))
            total = children + sum(map(self._pss, top))
            self.peak, self.peak_children = max(self.peak, total), max(self.peak_children, children)
            self._stop.wait(PSS_EVERY)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run(cmd: list[str], watch: Path | None = None, pss: bool = False) -> dict:
    """Run a command to its end: wall seconds, peak RSS (its own and its waited-for children's,
    bytes: see LAUNCHER), with `pss` the peak PSS of its process tree and of its descendants alone,
    its stdout and, with `watch` (metrics.jsonl), the seconds until it holds a training step."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err, rss_file = (Path(tmp) / name for name in ("stdout", "stderr", "maxrss"))
        start = time.perf_counter()
        with open(out, "wb") as fo, open(err, "wb") as fe:  # files, not pipes: nothing to drain
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", LAUNCHER, str(rss_file), *cmd],
                                    stdout=fo, stderr=fe)
            sampler = PssSampler(proc.pid) if pss else None
            first_step = None
            try:
                while watch is not None and first_step is None and proc.poll() is None:
                    if watch.exists() and '"type": "train"' in watch.read_text():
                        first_step = time.perf_counter() - start
                    time.sleep(0.02)
                status = proc.wait()
                seconds = time.perf_counter() - start
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                if sampler is not None:
                    sampler.stop()
        if status != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err.read_text(errors='replace')[-2000:]}")
        return {"seconds": seconds, "peak_rss": int(rss_file.read_text()) * 1024,
                "peak_pss": sampler.peak if sampler else None,
                "peak_pss_children": sampler.peak_children if sampler else None,
                "first_step_s": first_step, "stdout": out.read_text(errors="replace")}


def spm_encode(model: Path, files: list[Path], work: Path) -> float | None:
    """Seconds for two spm_encode processes to encode the lines of `files`, split in two halves."""
    if shutil.which("spm_encode") is None:
        return None
    halves = [work / "half0.txt", work / "half1.txt"]
    with open(halves[0], "wb") as a, open(halves[1], "wb") as b:
        for path in files:
            lines = path.read_bytes().splitlines(keepends=True)
            a.writelines(lines[: len(lines) // 2])
            b.writelines(lines[len(lines) // 2:])
    start = time.perf_counter()
    procs = [subprocess.Popen(["spm_encode", f"--model={model}", "--output_format=id", f"--input={h}",
                               "--output=/dev/null"]) for h in halves]
    if any(p.wait() != 0 for p in procs):
        return None
    seconds = time.perf_counter() - start
    for h in halves:
        h.unlink()
    return seconds


def measure(n: int, data_dir: Path, work: Path, torchrun: bool) -> dict:
    src, tgt = make_corpus(n, work / f"corpus_{n}", data_dir)
    sets = overrides(src, tgt, data_dir)
    recipe = str(ROOT / "recipes/wmt16_en_ro.toml")
    exp = work / f"exp_{n}"
    shutil.rmtree(exp, ignore_errors=True)
    lines = 2 * n
    full = run([*CLI, "prepare", recipe, "--out", str(exp), *sets])
    shutil.rmtree(exp / "cache")
    encode = run([*CLI, "prepare", recipe, "--out", str(exp), *sets])
    meta = json.loads((exp / "cache" / "train.json").read_text())
    cache_bytes = sum(f.stat().st_size for f in (exp / "cache").glob("train.*") if f.suffix != ".json")
    tokens = meta["src"]["tokens"] + meta["tgt"]["tokens"]
    spm_s = spm_encode(exp / "spm.model", [src, tgt], work)
    train_dir = work / f"train_{n}"
    shutil.rmtree(train_dir, ignore_errors=True)
    shutil.copytree(exp, train_dir)
    train = run([*CLI, "train", recipe, "--out", str(train_dir), *sets], watch=train_dir / "metrics.jsonl", pss=True)
    shutil.rmtree(train_dir)
    row = {"pairs": n, "kept_pairs": meta["pairs"], "prepare_s": full["seconds"], "prepare_rss": full["peak_rss"],
           "prepare_lines_per_s": lines / full["seconds"], "encode_s": encode["seconds"],
           "encode_rss": encode["peak_rss"], "encode_lines_per_s": lines / encode["seconds"],
           "spm_encode_lines_per_s": lines / spm_s if spm_s else None,
           "cache_bytes_per_token": cache_bytes / tokens, "tokens": tokens,
           "first_step_s": train["first_step_s"], "train_rss": train["peak_rss"], "train_pss": train["peak_pss"]}
    if torchrun:
        ddp_dir = work / f"ddp_{n}"
        shutil.rmtree(ddp_dir, ignore_errors=True)
        shutil.copytree(exp, ddp_dir)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "seq2seq.cli", "train", recipe, "--out", str(ddp_dir), *sets,
               "--set", "train.threads=1"]
        ddp = run(cmd, pss=True)
        shutil.rmtree(ddp_dir)
        row["ddp2_pss"], row["ddp2_ranks_pss"] = ddp["peak_pss"], ddp["peak_pss_children"]
        params = int(re.search(r"^  total +([\d,]+)$", train["stdout"], re.M).group(1).replace(",", ""))
        row["model_state_bytes"] = 4 * 4 * params  # float32 weights, gradients, Adam's two moments
        row["import_pss"] = run([sys.executable, "-c", "import time, torch, seq2seq.train; time.sleep(2)"],
                                pss=True)["peak_pss"]  # asleep for 4 samples after the imports
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the first two sizes only")
    ap.add_argument("--sizes", type=int, nargs="+", default=[29_000, 290_000, 2_900_000])
    ap.add_argument("--data-dir", default=os.environ.get("SEQ2SEQ_DATA_DIR", "data/multi30k"))
    ap.add_argument("--work", default=str(ROOT / "bench/results/data_scale"))
    args = ap.parse_args()
    sizes = args.sizes[:2] if args.quick else args.sizes
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import torch
    hw = hardware(torch.device("cpu"))
    print(f"cpu: {hw['cpu']}, {hw['cpu_cores']} cores; torch {torch.__version__}", flush=True)
    ddp = sizes[-1] >= 1_000_000  # two ranks at the smallest and the largest size: what the corpus adds
    rows = [measure(n, Path(args.data_dir), work, torchrun=ddp and n in (sizes[0], sizes[-1])) for n in sizes]
    gib = 1 << 30
    print(f"{'pairs':>9} {'prepare s':>9} {'lines/s':>9} {'RSS GiB':>7} | {'encode s':>8} {'lines/s':>9} "
          f"{'spm lines/s':>11} | {'B/token':>7} | {'1st step s':>10} {'train RSS GiB':>13}")
    for r in rows:
        spm = f"{r['spm_encode_lines_per_s']:>11,.0f}" if r["spm_encode_lines_per_s"] else f"{'n/a':>11}"
        print(f"{r['pairs']:>9,} {r['prepare_s']:>9.1f} {r['prepare_lines_per_s']:>9,.0f} {r['prepare_rss'] / gib:>7.2f} | "
              f"{r['encode_s']:>8.1f} {r['encode_lines_per_s']:>9,.0f} {spm} | {r['cache_bytes_per_token']:>7.3f} | "
              f"{r['first_step_s']:>10.2f} {r['train_rss'] / gib:>13.3f}")
    last, first = rows[-1], rows[0]
    for r in rows:
        if "ddp2_pss" in r:
            one, ranks, state = r["train_pss"], r["ddp2_ranks_pss"], r["model_state_bytes"]
            bound = 1.2 * one + state
            print(f"torchrun, 2 ranks at {r['pairs']:,} pairs: the ranks' summed PSS {ranks / gib:.3f} GiB "
                  f"(+ {(r['ddp2_pss'] - ranks) / gib:.3f} GiB torchrun's launcher) against one process's "
                  f"{one / gib:.3f} GiB ({ranks / one:.2f}x)\n  the issue's bound 1.2x one + model state "
                  f"{state / gib:.3f} = {bound / gib:.3f} GiB: {'met' if ranks <= bound else 'not met'}\n  "
                  f"one process + the least a second costs (import {r['import_pss'] / gib:.3f} + state "
                  f"{state / gib:.3f}) = {(one + r['import_pss'] + state) / gib:.3f} GiB")
    if "ddp2_ranks_pss" in last and "ddp2_ranks_pss" in first and last is not first:
        print(f"two ranks at {last['pairs']:,} pairs hold {last['ddp2_ranks_pss'] / first['ddp2_ranks_pss']:.3f}x "
              f"the memory of two ranks at {first['pairs']:,}")
    vs_spm = (last["encode_lines_per_s"] / last["spm_encode_lines_per_s"]) if last["spm_encode_lines_per_s"] else float("nan")
    save_result("data_scale", {"hardware": hw, "rows": rows})
    print(f"prepare_rss_gib={last['prepare_rss'] / gib:.2f} prepare_vs_spm={vs_spm:.2f} "
          f"train_rss_ratio={last['train_rss'] / first['train_rss']:.3f} first_step_s={last['first_step_s']:.2f}")


if __name__ == "__main__":
    main()
