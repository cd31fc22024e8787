"""What training-time noise (seq2seq.noise) costs per batch, against plain collation.

    python bench/noise_speed.py [--data-dir DIR] [--batches 200]

Prepares recipes/multi30k_de_en_cpu.toml's data in a temporary directory (SentencePiece and the
encoded splits, ~20 s), draws --batches training batches of 2,000 tokens, and times building them
(one thread) plainly and with each kind of noise, one after the other over the same batches.

Last line: sampling16_vs_plain=<ratio> sampling64_vs_plain=<ratio> word_dropout_vs_plain=<ratio>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import ROOT, cpu_name, save_result

from seq2seq import config
from seq2seq.batching import TokenBatchSampler, collate
from seq2seq.noise import Noise
from seq2seq.prepare import prepare

KINDS = {"sampling16": dict(subword_alpha=0.1, subword_nbest=16),
         "sampling64": dict(subword_alpha=0.1, subword_nbest=64),
         "word_dropout": dict(src_word_dropout=0.1, tgt_word_dropout=0.1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"cpu: {cpu_name()}, 1 thread, torch {torch.__version__}", flush=True)
    cfg = config.load(ROOT / "recipes/multi30k_de_en_cpu.toml")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(cfg, Path(tmp), args.data_dir, log=lambda *a: None)
        split = prepared.splits["train"]
        sampler = TokenBatchSampler(split.sizes(), cfg.train.batch_tokens, 1, 0, 1)
        batches = [sampler.next_batch() for _ in range(args.batches)]

        def ms_per_batch(build) -> float:
            start = time.perf_counter()
            for step, indices in enumerate(batches):
                build(step, indices)
            return 1000 * (time.perf_counter() - start) / len(batches)

        plain = ms_per_batch(lambda step, indices: collate(split, indices))
        result = {"cpu": cpu_name(), "batches": len(batches), "plain_ms": plain}
        print(f"plain collate: {plain:.1f} ms per batch")
        for name, settings in KINDS.items():
            noise = Noise(replace(cfg.train, **settings), prepared.tokenizers)
            result[f"{name}_ms"] = ms = ms_per_batch(lambda step, indices: noise.batch(split, indices, step))
            print(f"{name} ({settings}): {ms:.1f} ms per batch, {ms / plain:.1f}x plain", flush=True)
    save_result("noise_speed", result)
    print(" ".join(f"{name}_vs_plain={result[f'{name}_ms'] / plain:.1f}" for name in KINDS))


if __name__ == "__main__":
    main()
