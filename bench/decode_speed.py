"""Decoding throughput on test_2016_flickr: batched vs one sentence at a time, and the
whole `seq2seq translate` command (start-up and model load included).

    python bench/decode_speed.py [--quick] [--model exp/multi30k_de_en_cpu]

The model is a trained experiment directory or checkpoint (scripts/main.sh makes the
default one). One-sentence-at-a-time throughput is measured on the first sentences of
the test set (all of them without --quick); batched throughput on the whole test set.

Last line: beam5_batched_speedup=<ratio> greedy_batched_speedup=<ratio> beam5_sents_per_s=<n>
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import ROOT, save_result

from seq2seq import corpus
from seq2seq.prepare import split_files
from seq2seq.translate import Translator, decode_batch, decode_ids


def batched(translator: Translator, src: list[list[int]], beam: int) -> float:
    cfg = replace(translator.config.decode, beam=beam, nbest=1)
    start = time.perf_counter()
    decode_ids(translator.model, src, cfg, translator.device)
    return len(src) / (time.perf_counter() - start)


@torch.no_grad()
def one_at_a_time(translator: Translator, src: list[list[int]], beam: int) -> float:
    cfg = replace(translator.config.decode, beam=beam, nbest=1)
    translator.model.eval()
    start = time.perf_counter()
    for s in src:
        decode_batch(translator.model, [s], cfg, translator.device)
    return len(src) / (time.perf_counter() - start)


def whole_command(model: str, src_file: Path, threads: int) -> tuple[float, float]:
    """Wall time of `seq2seq translate --beam 5` over the file, and its peak RSS (GiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "seq2seq.cli", "translate", model, "-i", str(src_file),
                        "-o", str(Path(tmp) / "out"), "--beam", "5"], check=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20


def startup_seconds(model: str, threads: int) -> float:
    """Fresh interpreter: import the package and load the model (the best of 3)."""
    code = ("import time; t = time.perf_counter(); from seq2seq.translate import Translator; "
            f"Translator.load({model!r}); print(time.perf_counter() - t)")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                 env=env, cwd=ROOT).stdout) for _ in range(3)]
    return min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "exp/multi30k_de_en_cpu"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true", help="one-at-a-time on 100 sentences (< 3 minutes)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    translator = Translator.load(args.model)
    (src_file, _), = split_files(translator.config, args.data_dir, only=["test_2016_flickr"]).values()
    lines = corpus.read_lines(src_file)
    src = translator.tokenizers.src.encode(lines)
    subset = src[:100] if args.quick else src
    rows = {}
    for beam in (1, 5):
        rows[beam] = {"batched": batched(translator, src, beam), "single": one_at_a_time(translator, subset, beam)}
    seconds, rss = whole_command(args.model, src_file, args.threads)
    startup = startup_seconds(args.model, args.threads)
    result = {
        "model": args.model, "sentences": len(src), "single_sentences_measured": len(subset),
        "threads": args.threads,
        **{f"{'greedy' if b == 1 else 'beam5'}_{k}_sents_per_s": v for b, r in rows.items() for k, v in r.items()},
        "greedy_batched_speedup": rows[1]["batched"] / rows[1]["single"],
        "beam5_batched_speedup": rows[5]["batched"] / rows[5]["single"],
        "translate_command_seconds": seconds, "translate_command_sents_per_s": len(src) / seconds,
        "startup_seconds": startup, "peak_rss_gib_decoding": rss,
    }
    print(f"{'search':<8}{'batched sent/s':>16}{'one-at-a-time sent/s':>24}{'speedup':>9}")
    for beam, r in rows.items():
        print(f"{'greedy' if beam == 1 else 'beam 5':<8}{r['batched']:>16.1f}{r['single']:>24.1f}"
              f"{r['batched'] / r['single']:>9.1f}")
    print(f"`seq2seq translate --beam 5` on {len(src)} sentences: {seconds:.1f} s "
          f"({len(src) / seconds:.1f} sent/s, start-up + model load {startup:.2f} s, peak RSS {rss:.2f} GiB)")
    save_result("decode_speed", result)
    print(f"beam5_batched_speedup={result['beam5_batched_speedup']:.2f} "
          f"greedy_batched_speedup={result['greedy_batched_speedup']:.2f} "
          f"beam5_sents_per_s={result['translate_command_sents_per_s']:.1f}")


if __name__ == "__main__":
    main()
