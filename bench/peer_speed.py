"""Training speed and memory against OpenNMT-py 3.5.1, side by side in one window.

    python bench/peer_speed.py [--quick] [--minutes 5] [--data-dir DIR] [--precision auto]

Ours trains at --precision (train.precision; default auto: bf16 products where the CPU has native
bf16, float32 elsewhere); `--precision float32` is the float32 comparison. OpenNMT-py trains in
float32: its one precision option (model_dtype fp16) applies to CUDA only, so float32 is its
fastest CPU setting.

1. OpenNMT-py 3.5.1 goes into its own virtual environment (bench/results/peers/venv, kept between
   runs) beside torch 2.13.0, from $TORCH_INDEX_URL when set (as scripts/setup_env.sh installs it:
   PyTorch's CPU-only wheel index avoids the large CUDA build that PyPI serves on Linux):
   `pip install --no-deps opennmt-py==3.5.1`, then its other requirements by name (so that pip
   never swaps torch).
2. The data: `seq2seq prepare` of recipes/multi30k_de_en.toml with the comparison's shape (joint
   SentencePiece 8k, separate embeddings, untied output layer, dropout 0.2); the same SentencePiece
   model writes the pieces, space-separated, and the vocabulary for OpenNMT-py.
3. Three trainings, one after the other, each for the same wall time with 2 threads and nothing
   else running: OpenNMT-py with bench/onmt_rnn.yaml (4x bi-LSTM encoder, 4-layer input-feeding
   decoder, MLP attention, 128 sentences per step); ours with the same architecture
   (encoder.layers=4, attention_feed=input_feed, ~2,000 target tokens per step); ours with the
   design default (2-layer encoder, GNMT feed, fused decoder).
4. Each run trains for the same time after its first progress report (OpenNMT-py spends a minute
   or more loading its data first; a run that ends, or reports nothing within 15 minutes, stops the
   benchmark with the end of its log). Target tokens per second after a further warm-up, counted alike (end of sentence included: OpenNMT-py's
   counter leaves it out, so its figure is scaled by (pieces + 1) / pieces of the training target
   side), and each process's peak RSS (VmHWM).

5. Decoding (not with --quick): OpenNMT-py and ours, the same input-feeding architecture, each
   trained afresh for the same number of steps (--decode-steps, default 300), translate
   test_2016_flickr with beam 5 (`onmt_translate -beam_size 5`, batches of 3,200 source pieces;
   `seq2seq translate`'s defaults: beam 5, 16,000 source pieces per batch with the beams, i.e.
   3,200 without). Reported: sentences/s and output pieces/s over the translation itself (model
   loading excluded: OpenNMT-py's -report_time, our Translator timed after load), the process's
   wall time, and BLEU (sacrebleu, detokenized, against the raw reference) for context. The
   outputs differ in length, so both rates are given.

--quick: 90 s of training per run (the install is cached), about 8 minutes in all; no decoding.
--decode-only: step 5 alone.
Last line: input_feed_vs_onmt=<ratio> default_vs_onmt=<ratio> rss_ratio=<ours input feed / onmt>
[decode_sent_vs_onmt=<ratio> decode_tok_vs_onmt=<ratio>]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, cpu_line, save_result

from seq2seq.config import TRAIN_PRECISIONS

WORK = ROOT / "bench/results/peers"
ONMT_REQUIREMENTS = ["configargparse", "ctranslate2>=4,<5", "tensorboard", "flask", "waitress", "pyonmttok>=1,<2",
                     "pyyaml", "sacrebleu", "rapidfuzz", "pyahocorasick", "fasttext-wheel", "spacy", "six"]
SHAPE = ["tokenizer.vocab_size=8000", "tokenizer.joint=true", "model.share_embeddings=false",
         "model.decoder.tie_embeddings=false", "model.encoder.dropout=0.2", "model.decoder.dropout=0.2",
         "train.src_word_dropout=0", "train.tgt_word_dropout=0"]  # OpenNMT-py's config has no word dropout
OURS = {
    "ours, the same architecture (input feeding)": ["model.encoder.layers=4", "model.decoder.attention_feed='input_feed'"],
    "ours, the design default (GNMT feed, fused)": [],
}
WARMUP_SECONDS = 20  # tok/s is averaged over what follows
STARTUP_SECONDS = 900  # the longest wait for a run's first progress report (OpenNMT-py takes a minute or more)


def onmt_venv() -> Path:
    venv = WORK / "venv"
    done = venv / ".installed-3.5.1"
    if done.exists():
        return venv
    print("installing OpenNMT-py 3.5.1 into", venv.relative_to(ROOT), flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    index = os.environ.get("TORCH_INDEX_URL")  # as scripts/setup_env.sh: e.g. the CPU-only wheels
    subprocess.run([*pip, *(["--index-url", index] if index else []), "torch==2.13.0"], check=True)
    subprocess.run([*pip, "--no-deps", "opennmt-py==3.5.1"], check=True)
    subprocess.run([*pip, *ONMT_REQUIREMENTS], check=True)
    done.touch()
    return venv


def prepare(data_dir: str | None) -> tuple[Path, float]:
    """Our experiment directory (prepared) and OpenNMT-py's data; returns (expdir, EOS factor)."""
    import sentencepiece as spm
    from seq2seq import config, corpus
    from seq2seq.prepare import prepare as prepare_exp, split_files
    cfg = config.load(ROOT / "recipes/multi30k_de_en.toml", SHAPE)
    expdir = WORK / "prepared"
    prepare_exp(cfg, expdir, data_dir)
    sp = spm.SentencePieceProcessor(model_file=str(expdir / "spm.model"))
    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    files = split_files(cfg, data_dir, only=["train", "valid", "test_2016_flickr"])
    counts: dict[str, int] = {}
    pieces = lines = 0
    for split, (src_file, tgt_file) in files.items():
        name = {"train": "train", "valid": "val"}.get(split, split)
        for lang, path in ((cfg.data.src, src_file), (cfg.data.tgt, tgt_file)):
            encoded = [sp.encode(line, out_type=str) for line in corpus.read_lines(path)]
            (data / f"{name}.sp.{lang}").write_text("".join(" ".join(p) + "\n" for p in encoded), encoding="utf-8")
            if name == "train":
                for p in encoded:
                    for piece in p:
                        counts[piece] = counts.get(piece, 0) + 1
                if lang == cfg.data.tgt:
                    pieces += sum(map(len, encoded))
                    lines += len(encoded)
    vocab = sorted(counts.items(), key=lambda kv: -kv[1])
    (data / "vocab.txt").write_text("".join(f"{p}\t{c}\n" for p, c in vocab), encoding="utf-8")
    return expdir, (pieces + lines) / pieces


def peak_rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2 ** 20
    except (OSError, StopIteration):
        return 0.0


def run_for(cmd: list[str], seconds: float, log: Path, env: dict, progress: Path, marker: str) -> float:
    """Run cmd until it has trained for `seconds` after its first progress report (`marker` in
    the file `progress`; start-up and data loading differ a lot between toolkits), then SIGTERM.
    Returns its peak RSS in GiB. A process that exits, or reports no progress within
    STARTUP_SECONDS, ends the benchmark with the last lines of its log."""
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            give_up, deadline, peak = time.monotonic() + STARTUP_SECONDS, None, 0.0
            while deadline is None or time.monotonic() < deadline:
                time.sleep(1)
                if p.poll() is not None:
                    raise SystemExit(f"{cmd[0]} ended early (exit status {p.returncode}); see {log}:\n{tail(log)}")
                peak = max(peak, peak_rss_gib(p.pid))
                if deadline is None and progress.exists() and marker in progress.read_text(errors="replace"):
                    deadline = time.monotonic() + seconds
                if deadline is None and time.monotonic() > give_up:
                    raise SystemExit(f"{cmd[0]} reported no progress in {STARTUP_SECONDS} s; stopped it. "
                                     f"See {log}:\n{tail(log)}")
            peak = max(peak, peak_rss_gib(p.pid))
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                pass  # killed below
        finally:
            if p.poll() is None:  # did not stop on SIGTERM, or we are leaving on an error
                p.kill()
                p.wait()
    return peak


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def onmt_run(venv: Path, seconds: float, eos_factor: float) -> dict:
    run = WORK / "onmt"
    run.mkdir(parents=True, exist_ok=True)
    cfg = (ROOT / "bench/onmt_rnn.yaml").read_text().replace("$PEERS_DIR", str(WORK))
    (run / "config.yaml").write_text(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    started = time.time()
    peak = run_for([str(venv / "bin/onmt_train"), "-config", str(run / "config.yaml")], seconds,
                   run / "stdout.log", env, run / "stdout.log", " Step ")  # it logs its steps to stdout
    # "[... INFO] Step 290/1000000; acc: 29.0; ppl: 173.8; xent: 5.2; lr: 0.00100; sents: 1280;
    #  bsz: 1574/1754/128; 2614/2913 tok/s; 241 sec;"  (tok/s: source/target, since its last report)
    reports = [(float(m.group(3)), int(m.group(1)), float(m.group(2)))
               for m in re.finditer(r"Step (\d+)/.*?; \d+/(\d+) tok/s; +(\d+) sec", (run / "stdout.log").read_text())]
    first = reports[0][0] if reports else 0  # its first window holds the start-up: left out
    after = [(sec, step, tok) for sec, step, tok in reports if sec >= first + WARMUP_SECONDS]
    if not after:
        raise SystemExit(f"OpenNMT-py reported no steps {WARMUP_SECONDS} s after its first; see {run / 'stdout.log'}")
    raw = sum(t for _, _, t in after) / len(after)
    return {"tok_per_s": raw * eos_factor, "tok_per_s_its_counter": raw, "steps": reports[-1][1],
            "peak_rss_gib": peak, "seconds": time.time() - started}


def ours_run(name: str, settings: list[str], expdir: Path, seconds: float, data_dir: str | None,
             precision: str) -> dict:
    out = WORK / ("ours_" + re.sub(r"\W+", "_", name)[:40])
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    for f in ("spm.model", "prepare.json", "cache"):  # the prepared data, shared by both runs
        os.symlink(expdir / f, out / f)
    sets = [x for s in [*SHAPE, *settings, f"train.precision='{precision}'", "train.threads=2", "train.log_every=10", "train.valid_every=1000000", "train.max_steps=0",
                        "train.max_minutes=0"] for x in ("--set", s)]
    cmd = [sys.executable, "-m", "seq2seq.cli", "train", str(ROOT / "recipes/multi30k_de_en.toml"), "--out", str(out),
           *sets, *(["--data-dir", data_dir] if data_dir else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    peak = run_for(cmd, seconds, out / "stdout.log", env, out / "metrics.jsonl", '"type": "train"')
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    first = train[0]["minutes"] * 60 if train else 0
    after = [r for r in train if r["minutes"] * 60 >= first + WARMUP_SECONDS]
    if not after:
        raise SystemExit(f"{name}: no training reports after {WARMUP_SECONDS} s; see {out}")
    start = next(r for r in records if r["type"] == "start")
    return {"tok_per_s": sum(r["tok_per_s"] for r in after) / len(after), "steps": train[-1]["step"],
            "peak_rss_gib": peak, "precision": start["precision"]}


OURS_TRANSLATE = """
import dataclasses, json, sys, time
from seq2seq import corpus
from seq2seq.translate import Translator
model, src, out = sys.argv[1:4]
translator = Translator.load(model)
lines = corpus.read_lines(src)
start = time.perf_counter()
best = [n[0] if n else None for n in translator.translate_with_details(lines, beam=5)]
seconds = time.perf_counter() - start
with open(out, "w", encoding="utf-8") as f:
    f.writelines((t.text if t else "") + "\\n" for t in best)
print(json.dumps({"seconds": seconds, "pieces": sum(len(t.tokens) for t in best if t),
                  "decode": dataclasses.asdict(translator.decode_config(beam=5))}))
"""


def bleu(hypotheses: list[str], reference: Path) -> float:
    from seq2seq import corpus, scoring
    return scoring.score(hypotheses, corpus.read_lines(reference))["bleu"]


def onmt_decode(venv: Path, steps: int, reference: Path) -> dict:
    """Train OpenNMT-py for `steps` steps (bench/onmt_rnn.yaml otherwise), then beam-5 test_2016_flickr."""
    import sentencepiece as spm
    run = WORK / "onmt_decode"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    run.mkdir(parents=True)
    cfg = (ROOT / "bench/onmt_rnn.yaml").read_text().replace("$PEERS_DIR/onmt/", "$PEERS_DIR/onmt_decode/")
    cfg = cfg.replace("$PEERS_DIR", str(WORK))
    cfg = re.sub(r"(?m)^train_steps: \d+", f"train_steps: {steps}", cfg)
    cfg = re.sub(r"(?m)^save_checkpoint_steps: \d+", f"save_checkpoint_steps: {steps}", cfg)
    (run / "config.yaml").write_text(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    with open(run / "train.stdout.log", "wb") as log:
        subprocess.run([str(venv / "bin/onmt_train"), "-config", str(run / "config.yaml")], stdout=log,
                       stderr=subprocess.STDOUT, env=env, check=True)
    out = run / "test.sp.en"
    # OpenNMT-py 3.5.1 loads its checkpoints (argparse.Namespace inside) with torch.load's old
    # default; torch >= 2.6 refuses that unless told to (the file is the one trained just above)
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    start = time.perf_counter()
    done = subprocess.run([str(venv / "bin/onmt_translate"), "-model", str(run / f"model/m_step_{steps}.pt"),
                           "-src", str(WORK / "data/test_2016_flickr.sp.de"), "-output", str(out), "-beam_size", "5",
                           "-batch_type", "tokens", "-batch_size", "3200", "-report_time", "-gpu", "-1"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (run / "translate.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"onmt_translate failed; see {run / 'translate.log'}:\n{done.stderr[-2000:]}")
    seconds = float(re.search(r"Total translation time \(s\): ([\d.]+)", done.stdout + done.stderr).group(1))
    pieces = [line.split() for line in out.read_text(encoding="utf-8").splitlines()]
    sp = spm.SentencePieceProcessor(model_file=str(WORK / "prepared/spm.model"))
    texts = [sp.decode_pieces(p) for p in pieces]
    return {"seconds": seconds, "wall_s": wall, "sentences": len(pieces), "pieces": sum(map(len, pieces)),
            "bleu": bleu(texts, reference)}


def ours_decode(expdir: Path, steps: int, reference: Path, source: Path, data_dir: str | None) -> dict:
    """Train ours (input feeding, the OpenNMT-py architecture) for `steps` steps, then beam-5 test_2016_flickr."""
    out = WORK / "ours_decode"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    for f in ("spm.model", "prepare.json", "cache"):
        os.symlink(expdir / f, out / f)
    settings = [*SHAPE, *OURS["ours, the same architecture (input feeding)"], "train.threads=2",
                "train.log_every=10", f"train.max_steps={steps}", f"train.valid_every={steps}", "train.max_minutes=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    with open(out / "train.stdout.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "seq2seq.cli", "train", str(ROOT / "recipes/multi30k_de_en.toml"),
                        "--out", str(out), *[x for s in settings for x in ("--set", s)],
                        *(["--data-dir", data_dir] if data_dir else [])],
                       stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    hyp = out / "test.en"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", OURS_TRANSLATE, str(out), str(source), str(hyp)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"our translation failed:\n{done.stderr[-2000:]}")
    timing = json.loads(done.stdout.splitlines()[-1])
    texts = hyp.read_text(encoding="utf-8").splitlines()
    return {"seconds": timing["seconds"], "wall_s": wall, "sentences": len(texts), "pieces": timing["pieces"],
            "bleu": bleu(texts, reference), "decode": timing["decode"]}


def decode_comparison(venv: Path, expdir: Path, steps: int, data_dir: str | None) -> dict:
    from seq2seq import config
    from seq2seq.prepare import split_files
    cfg = config.load(ROOT / "recipes/multi30k_de_en.toml", SHAPE)
    source, reference = split_files(cfg, data_dir, only=["test_2016_flickr"])["test_2016_flickr"]
    rows = {"OpenNMT-py 3.5.1, onmt_translate": onmt_decode(venv, steps, reference),
            "ours, seq2seq translate": ours_decode(expdir, steps, reference, source, data_dir)}
    print(f"\nbeam 5, test_2016_flickr (1,000 sentences), both trained {steps} steps with the input-feeding architecture")
    print(f"{'run':<34} {'sent/s':>7} {'pieces/s':>9} {'out pieces':>10} {'translate s':>11} {'wall s':>7} {'BLEU':>6}")
    for name, r in rows.items():
        r["sent_per_s"], r["pieces_per_s"] = r["sentences"] / r["seconds"], r["pieces"] / r["seconds"]
        print(f"{name:<34} {r['sent_per_s']:>7.1f} {r['pieces_per_s']:>9,.0f} {r['pieces']:>10,} {r['seconds']:>11.1f} "
              f"{r['wall_s']:>7.1f} {r['bleu']:>6.2f}")
    onmt, ours = rows.values()
    print("ours decoded with its recipe's [decode] settings:",
          ", ".join(f"{k}={v}" for k, v in ours["decode"].items()), flush=True)
    return {"steps": steps, "runs": rows, "sent_vs_onmt": ours["sent_per_s"] / onmt["sent_per_s"],
            "pieces_vs_onmt": ours["pieces_per_s"] / onmt["pieces_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="90 s of training per run")
    ap.add_argument("--minutes", type=float, default=5.0, help="training time per run (default 5)")
    ap.add_argument("--data-dir", default=None, help="Multi30K (default: $SEQ2SEQ_DATA_DIR, data/multi30k)")
    ap.add_argument("--decode-steps", type=int, default=300, help="training steps before the decoding comparison")
    ap.add_argument("--decode-only", action="store_true", help="only the decoding comparison (step 5)")
    ap.add_argument("--precision", default="auto", choices=TRAIN_PRECISIONS,
                    help="train.precision of our runs (default auto)")
    args = ap.parse_args()
    seconds = 90 if args.quick else args.minutes * 60
    print(f"{cpu_line()}, 2 threads" + ("" if args.decode_only else f", {seconds:.0f} s of training per run, "
                                        f"ours at precision {args.precision}"), flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    venv = onmt_venv()
    expdir, eos_factor = prepare(args.data_dir)
    result = {"cpu": cpu_line(), "precision": args.precision}
    if not args.decode_only:
        result.update(train_comparison(venv, expdir, eos_factor, seconds, args.data_dir, args.precision))
    if not args.quick:
        result["decode"] = decode_comparison(venv, expdir, args.decode_steps, args.data_dir)
    save_result("peer_speed", result)
    last = []
    if "input_feed_vs_onmt" in result:
        last.append(f"input_feed_vs_onmt={result['input_feed_vs_onmt']:.2f} "
                    f"default_vs_onmt={result['default_vs_onmt']:.2f} rss_ratio={result['rss_ratio']:.2f}")
    if "decode" in result:
        last.append(f"decode_sent_vs_onmt={result['decode']['sent_vs_onmt']:.2f} "
                    f"decode_tok_vs_onmt={result['decode']['pieces_vs_onmt']:.2f}")
    print(" ".join(last))


def train_comparison(venv: Path, expdir: Path, eos_factor: float, seconds: float, data_dir: str | None,
                     precision: str) -> dict:
    rows = {"OpenNMT-py 3.5.1 (bench/onmt_rnn.yaml)": onmt_run(venv, seconds, eos_factor)}
    print(f"  OpenNMT-py: {rows['OpenNMT-py 3.5.1 (bench/onmt_rnn.yaml)']['tok_per_s']:,.0f} tok/s", flush=True)
    for name, settings in OURS.items():
        rows[name] = ours_run(name, settings, expdir, seconds, data_dir, precision)
        print(f"  {name} ({rows[name]['precision']}): {rows[name]['tok_per_s']:,.0f} tok/s", flush=True)
    onmt = rows["OpenNMT-py 3.5.1 (bench/onmt_rnn.yaml)"]
    print(f"\n{'run':<48} {'target tok/s':>12} {'vs OpenNMT-py':>13} {'steps':>6} {'peak RSS GiB':>12}")
    for name, r in rows.items():
        print(f"{name:<48} {r['tok_per_s']:>12,.0f} {r['tok_per_s'] / onmt['tok_per_s']:>12.2f}x {r['steps']:>6} "
              f"{r['peak_rss_gib']:>12.2f}")
    print(f"(OpenNMT-py's own counter: {onmt['tok_per_s_its_counter']:,.0f} tok/s without end of sentence; "
          f"x {eos_factor:.3f})", flush=True)
    feed, default = (rows[name] for name in OURS)
    return {"seconds_per_run": seconds, "eos_factor": eos_factor, "runs": rows,
            "input_feed_vs_onmt": feed["tok_per_s"] / onmt["tok_per_s"],
            "default_vs_onmt": default["tok_per_s"] / onmt["tok_per_s"],
            "rss_ratio": feed["peak_rss_gib"] / onmt["peak_rss_gib"]}


if __name__ == "__main__":
    main()
