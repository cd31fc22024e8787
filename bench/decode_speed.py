"""Decoding throughput on test_2016_flickr: the precisions compared on the whole
`seq2seq translate --beam 5` command (start-up and model load included), with the test BLEU of
each; then batched vs one sentence at a time (in the model's default precision).

    python bench/decode_speed.py [--quick] [--model exp/multi30k_de_en_cpu] [--rounds 2]

The model is a trained experiment directory or checkpoint (scripts/main.sh makes the default
one). The whole command runs once per precision per round, the precisions taking turns, and the
fastest round counts; its peak RSS is the command's own (bench/common.py's launcher). BLEU is
sacreBLEU against the raw reference. One-sentence-at-a-time throughput is measured on the first
100 sentences with --quick, on all of them without.

Last line: fastest_within_0.3_bleu=<precision> speedup_vs_float32=<ratio> bleu_delta=<delta>
  beam5_batched_speedup=<ratio> greedy_batched_speedup=<ratio>
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import ROOT, cpu_line, measured, save_result

from seq2seq import corpus, scoring
from seq2seq.prepare import split_files
from seq2seq.translate import Translator, decode_batch, decode_ids

PRECISIONS = ("float32", "bfloat16", "int8")


def batched(translator: Translator, src: list[list[int]], beam: int) -> float:
    cfg = replace(translator.config.decode, beam=beam, nbest=1)
    model = translator.decoding_model(cfg.precision)
    start = time.perf_counter()
    decode_ids(model, src, cfg, translator.device)
    return len(src) / (time.perf_counter() - start)


@torch.no_grad()
def one_at_a_time(translator: Translator, src: list[list[int]], beam: int) -> float:
    cfg = replace(translator.config.decode, beam=beam, nbest=1)
    model = translator.decoding_model(cfg.precision).eval()
    start = time.perf_counter()
    for s in src:
        decode_batch(model, [s], cfg, translator.device)
    return len(src) / (time.perf_counter() - start)


def whole_command(model: str, src_file: Path, out: Path, threads: int, precision: str) -> tuple[float, int]:
    """Wall seconds of `seq2seq translate --beam 5 --precision P` over the file, and its peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return measured([sys.executable, "-m", "seq2seq.cli", "translate", model, "-i", str(src_file), "-o", str(out),
                     "--beam", "5", "--precision", precision], env=env)


def precisions(model: str, src_file: Path, refs: list[str], threads: int, rounds: int) -> dict:
    """Per precision: the fastest round's seconds and sentences/s, peak RSS, BLEU of its output."""
    rows = {p: {"seconds": float("inf")} for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for p in PRECISIONS:  # taking turns: drift of the shared machine hits each alike
                out = Path(tmp) / f"{p}.txt"
                seconds, rss = whole_command(model, src_file, out, threads, p)
                if seconds < rows[p]["seconds"]:
                    rows[p].update(seconds=seconds, peak_rss_gib=rss / 2 ** 30)
                rows[p]["bleu"] = scoring.score(corpus.read_lines(out), refs)["bleu"]
    for p, r in rows.items():
        r["sents_per_s"] = len(refs) / r["seconds"]
        r["speedup"] = rows["float32"]["seconds"] / r["seconds"]
        r["bleu_delta"] = round(r["bleu"] - rows["float32"]["bleu"], 2)
    return rows


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
    ap.add_argument("--quick", action="store_true", help="one-at-a-time on 100 sentences, one round")
    ap.add_argument("--rounds", type=int, default=2, help="whole-command runs per precision (the fastest counts)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_line(), f"{args.threads} threads, torch {torch.__version__}", flush=True)
    translator = Translator.load(args.model)
    (src_file, ref_file), = split_files(translator.config, args.data_dir, only=["test_2016_flickr"]).values()
    refs = corpus.read_lines(ref_file)
    table = precisions(args.model, src_file, refs, args.threads, 1 if args.quick else args.rounds)
    print(f"{'precision':<10}{'sent/s':>8}{'vs float32':>11}{'BLEU':>7}{'delta':>7}{'peak RSS GiB':>14}")
    for p, r in table.items():
        print(f"{p:<10}{r['sents_per_s']:>8.1f}{r['speedup']:>11.2f}{r['bleu']:>7.2f}{r['bleu_delta']:>+7.2f}"
              f"{r['peak_rss_gib']:>14.2f}", flush=True)
    fastest = max((p for p in PRECISIONS if abs(table[p]["bleu_delta"]) <= 0.3), key=lambda p: table[p]["speedup"])

    lines = corpus.read_lines(src_file)
    src = translator.tokenizers.src.encode(lines)
    subset = src[:100] if args.quick else src
    rows = {}
    for beam in (1, 5):
        rows[beam] = {"batched": batched(translator, src, beam), "single": one_at_a_time(translator, subset, beam)}
    startup = startup_seconds(args.model, args.threads)
    result = {
        "model": args.model, "cpu": cpu_line(), "sentences": len(src), "threads": args.threads,
        "precisions": table, "fastest_within_0.3_bleu": fastest, "single_sentences_measured": len(subset),
        "decode_precision_default": translator.precision(translator.config.decode.precision)[0],
        **{f"{'greedy' if b == 1 else 'beam5'}_{k}_sents_per_s": v for b, r in rows.items() for k, v in r.items()},
        "greedy_batched_speedup": rows[1]["batched"] / rows[1]["single"],
        "beam5_batched_speedup": rows[5]["batched"] / rows[5]["single"],
        "startup_seconds": startup,
    }
    print(f"{'search':<8}{'batched sent/s':>16}{'one-at-a-time sent/s':>24}{'speedup':>9}"
          f"   (precision {result['decode_precision_default']})")
    for beam, r in rows.items():
        print(f"{'greedy' if beam == 1 else 'beam 5':<8}{r['batched']:>16.1f}{r['single']:>24.1f}"
              f"{r['batched'] / r['single']:>9.1f}")
    print(f"start-up + model load: {startup:.2f} s")
    save_result("decode_speed", result)
    print(f"fastest_within_0.3_bleu={fastest} speedup_vs_float32={table[fastest]['speedup']:.2f} "
          f"bleu_delta={table[fastest]['bleu_delta']:+.2f} "
          f"beam5_batched_speedup={result['beam5_batched_speedup']:.2f} "
          f"greedy_batched_speedup={result['greedy_batched_speedup']:.2f}")


if __name__ == "__main__":
    main()
