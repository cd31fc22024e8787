"""The tutorial's depth claims, measured on Multi30K de->en with one budget per cell.

    python recipes/ablation.py [--steps 1000] [--size 128] [--batch-tokens 1000] [--lr 0.004]
                               [--seeds 1 2] [--out exp/ablation] [--data-dir DIR]

Starting from recipes/multi30k_de_en_cpu.toml with every width (embeddings, RNN hidden
size, attention) set to --size and batches of --batch-tokens target tokens at learning
rate --lr (a small model learns fastest in a few minutes with small batches and a higher
rate), each cell changes one thing (one factor at a time from the base: encoder layers {1, 2, 4}, bidirectional vs unidirectional, decoder
layers {1, 2, 4, 8}, residual none/gnmt/dense, attention feed gnmt/input_feed) and trains
for the same number of steps with the same batches. Finished cells are skipped and
interrupted ones resumed, so the grid can be run across several sittings (--report-only
writes the table from what has finished). Writes
OUT/ablation.md (val and test BLEU, greedy, mean over seeds; parameters; tokens/s) and
OUT/ablation.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "recipes/multi30k_de_en_cpu.toml"

CELLS: dict[str, list[str]] = {
    "base (enc 2 bi, dec 4, gnmt res, gnmt feed)": [],
    "encoder 1 layer": ["model.encoder.layers=1"],
    "encoder 4 layers": ["model.encoder.layers=4"],
    "unidirectional encoder": ["model.encoder.bidirectional=false"],
    "decoder 1 layer": ["model.decoder.layers=1"],
    "decoder 2 layers": ["model.decoder.layers=2"],
    "decoder 8 layers": ["model.decoder.layers=8"],
    "decoder residual none": ["model.decoder.residual=none"],
    "decoder residual dense": ["model.decoder.residual=dense"],
    "decoder 8 layers, residual none": ["model.decoder.layers=8", "model.decoder.residual=none"],
    "attention feed input_feed": ["model.decoder.attention_feed=input_feed"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def seq2seq(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "seq2seq.cli", *args], check=True, cwd=ROOT)


def run_cell(name: str, overrides: list[str], seed: int, args) -> dict:
    expdir = Path(args.out) / f"{slug(name)}-s{seed}"
    width = [f"model.{part}.{key}={args.size}" for part, key in
             [("encoder", "hidden"), ("encoder", "embedding"), ("decoder", "hidden"),
              ("decoder", "embedding"), ("attention", "hidden")]]
    sets = [x for o in width + overrides + [f"train.seed={seed}", f"train.max_steps={args.steps}",
                                   f"train.batch_tokens={args.batch_tokens}", f"train.lr={args.lr}",
                                   "train.max_minutes=0", f"train.valid_every={args.steps}",
                                   f"train.log_every={max(1, min(50, args.steps // 4))}"] for x in ("--set", o)]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    metrics = expdir / "metrics.jsonl"
    done = metrics.exists() and any('"summary"' in line for line in metrics.read_text().splitlines())
    if not done and args.report_only:
        return None
    if not done:
        resume = ["--resume"] if (expdir / "checkpoints/last.pt").exists() else []
        seq2seq("train", str(BASE), "--out", str(expdir), *sets, *data, *resume)
    results = {}
    for split in ("val", "test_2016_flickr"):
        card = expdir / "results" / f"{split}.beam1.json"
        if not card.exists():
            seq2seq("evaluate", str(expdir), "--split", split, "--beam", "1", "--precision", "float32", *data)
        results[split] = json.loads(card.read_text())["bleu"]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    tok_s = [r["tok_per_s"] for r in records if r.get("type") == "train"]
    params = _parameters(expdir)
    return {"val": results["val"], "test": results["test_2016_flickr"], "params": params,
            "tok_per_s": statistics.median(tok_s) if tok_s else float("nan")}


def _parameters(expdir: Path) -> int:
    from seq2seq.translate import Translator
    from seq2seq.model import count_parameters
    return count_parameters(Translator.load(expdir).model)


def write_table(rows: dict[str, list[dict]], args) -> str:
    lines = [f"Multi30K de->en, {args.steps} steps of ~{args.batch_tokens:,}-token batches at lr {args.lr} per cell, "
             f"every width {args.size} "
             f"(recipes/multi30k_de_en_cpu.toml otherwise), seeds {', '.join(map(str, args.seeds))}; "
             "greedy sacreBLEU, mean ± half the range over the seeds run.", "",
             "| cell | seeds | val BLEU | test BLEU | parameters | target tok/s |", "|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        def stat(key: str) -> str:
            values = [r[key] for r in runs]
            mean = statistics.mean(values)
            return f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f}" if len(values) > 1 else f"{mean:.1f}"
        lines.append(f"| {name} | {len(runs)} | {stat('val')} | {stat('test')} | {runs[0]['params']:,} | "
                     f"{statistics.mean(r['tok_per_s'] for r in runs):,.0f} |")
    return "\n".join(lines) + "\n"


def write_plot(rows: dict[str, list[dict]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(rows)
    means = [statistics.mean(r["test"] for r in rows[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.2))
    ax.barh(range(len(names)), means, color="0.4")
    for i, n in enumerate(names):
        ax.plot([r["test"] for r in rows[n]], [i] * len(rows[n]), "k.", ms=6)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test_2016_flickr BLEU (greedy; dots: seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-tokens", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.004)
    ap.add_argument("--size", type=int, default=128, help="embedding, hidden and attention width")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "exp/ablation"))
    ap.add_argument("--data-dir")
    ap.add_argument("--cells", nargs="*", help="only these cells (by name)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: table and plot from the runs that have finished")
    args = ap.parse_args()
    cells = {k: v for k, v in CELLS.items() if not args.cells or k in args.cells}
    rows = {name: [r for seed in args.seeds if (r := run_cell(name, overrides, seed, args))]
            for name, overrides in cells.items()}
    rows = {name: runs for name, runs in rows.items() if runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(write_table(rows, args))
    write_plot(rows, out / "ablation.png")
    print((out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
