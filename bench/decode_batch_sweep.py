"""Decoding throughput against the decode batch size (source tokens per batch, beams included).

    python bench/decode_batch_sweep.py [--model exp/multi30k_de_en_cpu] [--data-dir DIR]

Batched greedy and beam-5 search over test_2016_flickr with the same checkpoint, one line per
setting; this is how the default `decode.batch_tokens` was chosen. Absolute sentences/s drift
with the machine; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from common import ROOT

from seq2seq import corpus
from seq2seq.config import DECODE_PRECISIONS
from seq2seq.prepare import split_files
from seq2seq.translate import Translator, decode_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "exp/multi30k_de_en_cpu"))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 8000, 16000, 32000])
    ap.add_argument("--precision", default="auto", choices=DECODE_PRECISIONS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    translator = Translator.load(args.model)
    (src_file, _), = split_files(translator.config, args.data_dir, only=["test_2016_flickr"]).values()
    src = translator.tokenizers.src.encode(corpus.read_lines(src_file))
    model = translator.decoding_model(args.precision)
    print(f"precision {translator.precision(args.precision)[0]}", flush=True)
    for beam in (5, 1):
        for size in args.sizes:
            cfg = replace(translator.config.decode, beam=beam, nbest=1, batch_tokens=size)
            start = time.perf_counter()
            decode_ids(model, src, cfg, translator.device)
            print(f"beam {beam} batch_tokens {size}: {len(src) / (time.perf_counter() - start):.1f} sent/s",
                  flush=True)


if __name__ == "__main__":
    main()
