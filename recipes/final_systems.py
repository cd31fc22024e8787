"""The final Multi30K systems of a direction, trained across as many sittings as they take.

    python recipes/final_systems.py de_en [--set KEY=VALUE ...] [--steps N] [--threads 1]
                                    [--beams 1 5 8 12] [--length-penalties ...] [--out exp/final]
                                    [--data-dir DIR] [--ensemble] [--evaluate]

For `recipes/multi30k_{de_en,en_de}.toml` with the --set overrides (what the low-resource ablation
found to pay), each step is done once and skipped when its output exists, so the same command
continues after an interruption (a training resumes from its last checkpoint):

1. train the model left to right (OUT/PAIR) and right to left (OUT/PAIR_r2l, another seed) for
   --steps steps each, or until early stopping; with --ensemble also a second left-to-right
   model (OUT/PAIR_seed3);
2. average the last 5 step checkpoints of each (checkpoints/avg_last5.pt);
3. `seq2seq tune` the average on val: beam x length penalty alone, and with the right-to-left
   average as reranker (its weight too); with --ensemble the same for the two left-to-right
   averages as an ensemble;
4. with --evaluate only: test_2016_flickr, read once per final system (the single model, the
   reranked pair, and with --ensemble the ensemble alone and reranked), at the settings val chose;
   a system whose test card exists is not decoded again.
Decoding is float32 throughout, so that the numbers do not depend on the CPU's int8 support.

Run the two directions side by side at one thread each on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from seq2seq.evaluate import card_suffix

ROOT = Path(__file__).resolve().parent.parent


def seq2seq(*args) -> None:
    subprocess.run([sys.executable, "-m", "seq2seq.cli", *map(str, args)], check=True, cwd=ROOT)


def finished(expdir: Path) -> bool:
    metrics = expdir / "metrics.jsonl"
    return metrics.exists() and any('"summary"' in line for line in metrics.read_text().splitlines())


def train(recipe: Path, expdir: Path, sets: list[str], data: list[str]) -> Path:
    """Train (or continue) one model; its averaged last 5 checkpoints."""
    if not finished(expdir):
        resume = ["--resume"] if (expdir / "checkpoints/last.pt").exists() else []
        seq2seq("train", recipe, "--out", expdir, *[x for s in sets for x in ("--set", s)], *data, *resume)
    average = expdir / "checkpoints/avg_last5.pt"
    if not average.exists():
        seq2seq("average", expdir, "--last", 5, "-o", average)
    return average


def results(models: list[Path]) -> Path:
    return models[0].parent.parent / "results"


def tag(models: list[Path], reranker: Path | None) -> str:
    """What `seq2seq tune` and `evaluate` add to their file names (decoding in float32 here)."""
    return card_suffix(len(models), "float32", reranker is not None)


def tuned(models: list[Path], grid: list, data: list[str], reranker: Path | None = None) -> dict:
    """The best setting on val (tune's grid card), tuned once; `grid` is tune's --beams and
    --length-penalties."""
    card = results(models) / f"tune.valid{tag(models, reranker)}.json"
    if not card.exists():
        seq2seq("tune", *models, *grid, "--precision", "float32", *data,
                *(["--rerank", reranker] if reranker else []))
    return json.loads(card.read_text())["best"]


def evaluated(models: list[Path], best: dict, data: list[str], reranker: Path | None = None) -> None:
    """test_2016_flickr at the setting val chose, once: an existing card is kept."""
    reranker = reranker if best.get("rerank_weight") else None
    card = results(models) / f"test_2016_flickr.beam{best['beam']}{tag(models, reranker)}.json"
    if card.exists():
        print(f"{card} exists: test_2016_flickr is read once per system")
    else:
        seq2seq("evaluate", *models, "--split", "test_2016_flickr", *flags(best, reranker), *data)


def flags(best: dict, reranker: Path | None = None) -> list:
    out = ["--beam", best["beam"], "--precision", "float32"]
    if best["length_penalty"] is not None:
        out += ["--length-penalty", best["length_penalty"]]
    if reranker is not None and best.get("rerank_weight"):
        out += ["--rerank", reranker, "--rerank-weight", best["rerank_weight"]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pair", choices=("de_en", "en_de"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=8000, help="training steps per model (early stopping may end sooner)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5, 8, 12], help="beam sizes tune tries")
    ap.add_argument("--length-penalties", type=float, nargs="+", help="length penalties tune tries (default: tune's)")
    ap.add_argument("--out", default=str(ROOT / "exp/final"))
    ap.add_argument("--data-dir")
    ap.add_argument("--ensemble", action="store_true", help="also a second left-to-right model (seed 3): "
                    "the two as an ensemble, alone and reranked")
    ap.add_argument("--evaluate", action="store_true", help="also score test_2016_flickr (once per system)")
    args = ap.parse_args()
    recipe = ROOT / f"recipes/multi30k_{args.pair}.toml"
    data = ["--data-dir", args.data_dir] if args.data_dir else []
    common = [f"train.max_steps={args.steps}", f"train.threads={args.threads}", *args.sets]
    out = Path(args.out)
    l2r = train(recipe, out / args.pair, common, data)
    r2l = train(recipe, out / f"{args.pair}_r2l", [*common, "model.target_order=right_to_left", "train.seed=2"], data)
    grid = ["--beams", *args.beams, *(["--length-penalties", *args.length_penalties] if args.length_penalties else [])]
    systems = [[l2r]]
    shown = lambda f: " ".join(map(str, f))  # noqa: E731
    if args.ensemble:
        systems.append([l2r, train(recipe, out / f"{args.pair}_seed3", [*common, "train.seed=3"], data)])
    for models in systems:
        alone, reranked = tuned(models, grid, data), tuned(models, grid, data, r2l)
        name = f"{args.pair}{' ensemble of 2' if len(models) > 1 else ''}"
        print(f"{name}: val BLEU {alone['bleu']:.2f} alone ({shown(flags(alone))}), {reranked['bleu']:.2f} "
              f"reranked ({shown(flags(reranked, r2l))})")
        if args.evaluate:
            evaluated(models, alone, data)
            if reranked.get("rerank_weight"):
                evaluated(models, reranked, data, r2l)


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:  # the command has said why; say which step stopped
        sys.exit(f"final_systems: `seq2seq {' '.join(e.cmd[3:])}` failed (exit status {e.returncode})")
