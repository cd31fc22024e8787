"""Pictures: learning curves from metrics.jsonl and attention heatmaps.

matplotlib is an optional extra (`pip install 'seq2seq[plot]'`); without it these
functions raise a Seq2SeqError that says how to install it.
"""

from __future__ import annotations

import json
from pathlib import Path

from seq2seq.errors import Seq2SeqError


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise Seq2SeqError("plotting needs matplotlib: pip install 'seq2seq[plot]' (or pip install matplotlib)") from None
    return matplotlib


def _pyplot():
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def read_metrics(expdir: Path) -> list[dict]:
    path = Path(expdir) / "metrics.jsonl"
    if not path.is_file():
        raise Seq2SeqError(f"{path}: no metrics (is {expdir} an experiment directory?)")
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):  # a torn last line from a killed run: skip it
                    continue
                raise Seq2SeqError(f"{path}:{number}: not a JSON record") from None
    return records


def learning_curves(expdirs: list[Path], out: Path, x: str = "step") -> None:
    """Training loss, validation loss and validation BLEU against steps (or minutes);
    one line per experiment directory."""
    plt = _pyplot()
    key = "step" if x == "step" else "minutes"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for expdir in expdirs:
        records = read_metrics(expdir)
        train = [r for r in records if r.get("type") == "train" and r.get("loss") is not None]
        valid = [r for r in records if r.get("type") == "valid"]
        label = Path(expdir).name
        axes[0].plot([r[key] for r in train], [r["loss"] for r in train], label=label)
        axes[1].plot([r[key] for r in valid], [r["valid_loss"] for r in valid], marker="o", ms=3, label=label)
        axes[2].plot([r[key] for r in valid], [r["valid_bleu"] for r in valid], marker="o", ms=3, label=label)
    for ax, title in zip(axes, ("training loss (label-smoothed)", "validation NLL per token",
                                "validation BLEU (sacreBLEU)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training steps" if key == "step" else "minutes of training")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, plt, out)


def attention_map(weights, src_tokens: list[str], tgt_tokens: list[str], out: Path) -> None:
    """Heatmap of attention weights (T, S): rows are target subwords, columns source subwords."""
    plt = _pyplot()
    T, S = len(tgt_tokens), len(src_tokens)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.38 * S + 1.5), max(3.0, 0.32 * T + 1.2)))
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(S))
    ax.set_xticklabels(src_tokens, rotation=70, fontsize=8)
    ax.set_yticks(range(T))
    ax.set_yticklabels(tgt_tokens, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    fig.tight_layout()
    _save(fig, plt, out)


def _save(fig, plt, out: Path) -> None:
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise Seq2SeqError(f"{out}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)
