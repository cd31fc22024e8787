"""Ablations on Multi30K de->en: one budget per cell, one factor changed at a time.

    python recipes/ablation.py [--grid depth|low_resource] [--steps N] [--size N] [--batch-tokens N]
                               [--lr X] [--seeds 1 2] [--out DIR] [--data-dir DIR] [--cells NAME ...]
                               [--threads N]

Two grids, both starting from recipes/multi30k_de_en_cpu.toml:

- `depth` (the tutorial's claims): every width (embeddings, RNN hidden size, attention) set to
  --size (128) and batches of --batch-tokens (1,000) target tokens at --lr 0.004 for --steps
  (1,000); cells change encoder layers {1, 2, 4}, bidirectional vs unidirectional, decoder
  layers {1, 2, 4, 8}, residual none/gnmt/dense, attention feed gnmt/input_feed. Reports val
  and test_2016_flickr BLEU.
- `low_resource` (what pays on a corpus this small): the CPU recipe as it was on 2026-12-05 (width
  256, vocabulary 5k, dropout 0.1, no word dropout, label smoothing 0.1, 2,000-token batches, lr 0.002
  halved on plateaus; those settings are pinned, so later recipe changes don't move the grid),
  validation every 500 steps, 3,000 steps; cells change
  model dropout, subword sampling, word dropout, vocabulary size, batch size and label smoothing.
  Reports val BLEU only: what goes into the recipes is chosen on val, and test_2016_flickr is
  read once per final system.

Every cell trains for the same number of steps on the same batch order (a batch-size cell gets
the steps that see the same number of tokens). Finished cells are skipped and interrupted ones
resumed, so a grid can be run across several sittings; seeds run one after the other over all
cells, so the first seed's table is complete first (--report-only writes the table from what
has finished). Two processes can share the work if each gets its own seeds or cells
(--threads 1 each on two cores). Writes OUT/ablation.md (greedy sacreBLEU, mean ± half the range
over the seeds; parameters; tokens/s) and OUT/ablation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "recipes/multi30k_de_en_cpu.toml"


@dataclass(frozen=True)
class Grid:
    cells: dict[str, list[str]]   # cell name -> --set overrides on top of the grid's settings
    steps: int
    batch_tokens: int
    lr: float
    size: int | None              # every width; None keeps the recipe's
    valid_every: int | None       # None: validate once, at the end
    splits: tuple[str, ...]       # what each cell is evaluated on (greedy)
    pins: tuple[str, ...] = ()    # the base cell's settings, written out: the recipe may change later


DROPOUT_03 = ["model.encoder.dropout=0.3", "model.decoder.dropout=0.3"]

GRIDS = {
    "depth": Grid({
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
    }, steps=1000, batch_tokens=1000, lr=0.004, size=128, valid_every=None, splits=("val", "test_2016_flickr")),
    "low_resource": Grid({  # the cells that decide the recipes first
        "base (vocab 5k, dropout 0.1, smoothing 0.1, 2k-token batches: the CPU recipe until 2026-12-06)": [],
        "dropout 0.3": DROPOUT_03,
        "subword sampling (alpha 0.1, 64-best)": ["train.subword_alpha=0.1", "train.subword_nbest=64"],
        "word dropout 0.1 (source and target)": ["train.src_word_dropout=0.1", "train.tgt_word_dropout=0.1"],
        "dropout 0.3 + subword sampling + word dropout 0.1": [
            *DROPOUT_03, "train.subword_alpha=0.1", "train.subword_nbest=64", "train.src_word_dropout=0.1",
            "train.tgt_word_dropout=0.1"],
        "dropout 0.3 + word dropout 0.1 (the final systems' choice)": [
            *DROPOUT_03, "train.src_word_dropout=0.1", "train.tgt_word_dropout=0.1"],
        "vocabulary 2k": ["tokenizer.vocab_size=2000"],
        "vocabulary 8k": ["tokenizer.vocab_size=8000"],
        "label smoothing 0.2": ["train.label_smoothing=0.2"],
        "word dropout 0.2 (source and target)": ["train.src_word_dropout=0.2", "train.tgt_word_dropout=0.2"],
        "1k-token batches (6,000 steps)": ["train.batch_tokens=1000", "train.max_steps=6000",
                                           "train.valid_every=1000"],
        "vocabulary 16k": ["tokenizer.vocab_size=16000"],
    }, steps=3000, batch_tokens=2000, lr=0.002, size=None, valid_every=500, splits=("val",),
        pins=("tokenizer.vocab_size=5000", "model.encoder.dropout=0.1", "model.decoder.dropout=0.1",
              "train.label_smoothing=0.1", "train.src_word_dropout=0", "train.tgt_word_dropout=0")),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def seq2seq(*args: str, threads: int | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    subprocess.run([sys.executable, "-m", "seq2seq.cli", *args], check=True, cwd=ROOT, env=env)


def run_cell(name: str, overrides: list[str], seed: int, args) -> dict | None:
    expdir = Path(args.out) / f"{slug(name)}-s{seed}"
    width = [] if args.size is None else [
        f"model.{part}.{key}={args.size}" for part, key in
        [("encoder", "hidden"), ("encoder", "embedding"), ("decoder", "hidden"),
         ("decoder", "embedding"), ("attention", "hidden")]]
    settings = [*width, f"train.seed={seed}", f"train.max_steps={args.steps}",
                f"train.batch_tokens={args.batch_tokens}", f"train.lr={args.lr}", "train.max_minutes=0",
                f"train.valid_every={args.valid_every or args.steps}",
                f"train.log_every={max(1, min(50, args.steps // 4))}", *args.pins,
                *([f"train.threads={args.threads}"] if args.threads else []), *overrides]  # the cell's own last
    sets = [x for o in settings for x in ("--set", o)]
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    metrics = expdir / "metrics.jsonl"
    done = metrics.exists() and any('"summary"' in line for line in metrics.read_text().splitlines())
    if not done and args.report_only:
        return None
    if not done:
        resume = ["--resume"] if (expdir / "checkpoints/last.pt").exists() else []
        seq2seq("train", str(BASE), "--out", str(expdir), *sets, *data, *resume, threads=args.threads)
    results = {}
    for split in args.splits:
        card = expdir / "results" / f"{split}.beam1.json"
        if not card.exists():
            seq2seq("evaluate", str(expdir), "--split", split, "--beam", "1", "--precision", "float32", *data,
                    threads=args.threads)
        results[split] = json.loads(card.read_text())["bleu"]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    tok_s = [r["tok_per_s"] for r in records if r.get("type") == "train"]
    summary = next(r for r in records if r.get("type") == "summary")
    precisions = sorted({r["precision"] for r in records if r.get("type") == "start"})
    valid = [r for r in records if r.get("type") == "valid"]  # the log's validations, one per valid_every steps
    return {**results, "seed": seed, "precision": "+".join(precisions), "params": _parameters(expdir),
            "minutes": summary["minutes"], "best_step": summary["best_step"],
            "tok_per_s": statistics.median(tok_s) if tok_s else float("nan"),
            "curve": [(r["step"], r["valid_bleu"], r["valid_loss"]) for r in valid]}


def _parameters(expdir: Path) -> int:
    from seq2seq.translate import Translator
    from seq2seq.model import count_parameters
    return count_parameters(Translator.load(expdir).model)


def write_table(rows: dict[str, list[dict]], args) -> str:
    from seq2seq.precision import cpu_model
    width = f"every width {args.size}" if args.size else "the recipe's widths"
    steps = f"{args.steps} steps of ~{args.batch_tokens:,}-token batches at lr {args.lr} per cell"
    lines = [f"Multi30K de->en, grid `{args.grid}`: {steps}, {width} (recipes/multi30k_de_en_cpu.toml "
             f"otherwise), seeds {', '.join(map(str, args.seeds))}; greedy sacreBLEU of the best checkpoint "
             "(float32 decoding), mean ± half the range over the seeds run; CPU: " + cpu_model(), ""]
    names = {"val": "val BLEU", "test_2016_flickr": "test BLEU"}
    lines += ["| cell | seeds | " + " | ".join(f"{names[s]} | per seed" for s in args.splits)
              + " | best step | minutes | training precision | parameters | target tok/s |",
              "|---|---|" + "---|---|" * len(args.splits) + "---|---|---|---|---|"]
    for name, runs in rows.items():
        def stat(key: str, digits: int = 1) -> str:
            values = [r[key] for r in runs]
            mean = statistics.mean(values)
            spread = f" ± {(max(values) - min(values)) / 2:.{digits}f}" if len(values) > 1 else ""
            return f"{mean:.{digits}f}{spread}"
        per_seed = lambda split: " / ".join(f"{r[split]:.2f} (s{r['seed']})" for r in runs)  # noqa: E731
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(f"{stat(s, 2)} | {per_seed(s)}" for s in args.splits)
                     + f" | {stat('best_step', 0)} | {stat('minutes')} | "
                     f"{', '.join(sorted({r['precision'] for r in runs}))} | {runs[0]['params']:,} | "
                     f"{statistics.mean(r['tok_per_s'] for r in runs):,.0f} |")
    if args.valid_every:
        lines += ["", *write_curves(rows)]
    return "\n".join(lines) + "\n"


def write_curves(rows: dict[str, list[dict]]) -> list[str]:
    """Validation BLEU at the last four validations (1/2, 2/3, 5/6 and all of the steps when
    validating every 1/6th) and the final validation loss, one line per cell and seed."""
    lines = ["Validation during training (greedy, the training run's decoding precision), per seed:", "",
             "| cell | seed | val BLEU at the last four validations (steps) | val loss at the end |",
             "|---|---|---|---|"]
    for name, runs in rows.items():
        for run in runs:
            last = run["curve"][-4:]
            bleu = ", ".join(f"{b:.1f} ({step:,})" for step, b, _ in last)
            step, _, loss = run["curve"][-1]
            low_step, _, low = min(run["curve"], key=lambda c: c[2])
            lowest = f" (lowest {low:.3f} at {low_step:,})" if low < loss else ""
            lines.append(f"| {name} | {run['seed']} | {bleu} | {loss:.3f}{lowest} |")
    return lines


def write_plot(rows: dict[str, list[dict]], out: Path, split: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(rows)
    means = [statistics.mean(r[split] for r in rows[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.2))
    ax.barh(range(len(names)), means, color="0.4")
    for i, n in enumerate(names):
        ax.plot([r[split] for r in rows[n]], [i] * len(rows[n]), "k.", ms=6)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([n.split(" (")[0] for n in names], fontsize=8)  # the table has the whole name
    ax.invert_yaxis()
    ax.set_xlim(min(means) - 3, max(max(r[split] for r in runs) for runs in rows.values()) + 1)
    ax.set_xlabel(f"{split} BLEU (greedy; dots: seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="depth")
    ap.add_argument("--steps", type=int, help="default: the grid's")
    ap.add_argument("--batch-tokens", type=int, help="default: the grid's")
    ap.add_argument("--lr", type=float, help="default: the grid's")
    ap.add_argument("--size", type=int, help="embedding, hidden and attention width (default: the grid's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", help="default: exp/ablation (depth), exp/low_resource")
    ap.add_argument("--data-dir")
    ap.add_argument("--cells", nargs="*", help="only these cells (by name)")
    ap.add_argument("--threads", type=int, help="CPU threads per training and decode (default: the recipe's)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: table and plot from the runs that have finished")
    args = ap.parse_args()
    grid = GRIDS[args.grid]
    for key in ("steps", "batch_tokens", "lr", "size"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(grid, key))
    args.valid_every, args.splits, args.pins = grid.valid_every, grid.splits, grid.pins
    args.out = args.out or str(ROOT / ("exp/ablation" if args.grid == "depth" else f"exp/{args.grid}"))
    unknown = set(args.cells or ()) - set(grid.cells)
    if unknown:
        ap.error(f"no such cell in grid {args.grid}: {', '.join(sorted(unknown))}")
    cells = {k: v for k, v in grid.cells.items() if not args.cells or k in args.cells}
    runs = {name: [] for name in cells}
    for seed in args.seeds:  # seed-major: the first seed's table is whole before the second starts
        for name, overrides in cells.items():
            if result := run_cell(name, overrides, seed, args):
                runs[name].append(result)
    rows = {name: r for name, r in runs.items() if r}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(write_table(rows, args))
    if rows:
        write_plot(rows, out / "ablation.png", args.splits[-1])
    print((out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
