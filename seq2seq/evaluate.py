"""sacreBLEU scoring, results cards, and decoding settings tuned on validation.

BLEU and chrF are always sacrebleu's, on detokenized text against the raw reference;
every number travels with its signature. `tune` only ever decodes the validation split,
so the beam size and length penalty it picks have never seen a test set.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Callable

import sacrebleu
import torch

from seq2seq import __version__, corpus, precision, rerank
from seq2seq.checkpoint import atomic_write_bytes
from seq2seq.config import to_dict
from seq2seq.errors import Seq2SeqError
from seq2seq.prepare import split_files, split_names
from seq2seq.scoring import score


def evaluate_split(translator, split: str, data_dir: str | None = None, **decode) -> dict:
    """Evaluate on a split of the model's own recipe; the card goes to EXPDIR/results/."""
    cfg = translator.config
    name = "valid" if split in ("valid", cfg.data.valid_split) else split
    if name not in split_names(cfg):
        raise Seq2SeqError(f"--split {split}: the recipe has splits {', '.join(sorted(split_names(cfg)))}")
    (src, ref), = split_files(cfg, data_dir, only=[name]).values()
    return evaluate(translator, split, src, ref, _results_dir(translator), **decode)


def _results_dir(translator) -> Path:
    """EXPDIR/results of the (first) checkpoint translating."""
    ckpt = Path(translator.sources[0])
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / "results"


def card_suffix(models: int, precision: str, reranked: bool) -> str:
    """What follows SPLIT.beamK (or tune.valid) in a results file's name: .ensembleN for an
    ensemble of N (its cards sit beside the first model's own), .PRECISION unless float32, .rerank."""
    return ((f".ensemble{models}" if models > 1 else "") + ("" if precision == "float32" else f".{precision}")
            + (".rerank" if reranked else ""))


def hardware(device: torch.device) -> dict:
    """What the numbers were measured on: CPU model and cores, threads, GPU if one was used."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": precision.cpu_model(), "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": str(device), "gpu": gpu}


def _portable(path: str) -> str:
    """A checkpoint as it can be published: EXPERIMENT/checkpoints/NAME, never a machine path."""
    p = Path(path)
    return str(Path(p.parent.parent.name, p.parent.name, p.name)) if p.parent.name == "checkpoints" else p.name


def _checkpoints(translator) -> dict:
    """The card's "checkpoint" (the first model's), and "ensemble" (every model's) for an ensemble."""
    paths = [_portable(p) for p in translator.sources]
    return {"checkpoint": paths[0], **({"ensemble": paths} if len(paths) > 1 else {})}


def _rerankers(translator) -> list[dict]:
    return [{"checkpoint": _portable(s.translator.sources[0]), "weight": s.weight,
             "target_order": s.translator.config.model.target_order, "training": s.translator.training}
            for s in translator.rerankers]


def _portable_config(cfg) -> dict:
    """The recipe without this machine's data paths."""
    d = to_dict(cfg)
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("data_dir", "train", "valid", "test")}
    return d


def evaluate(translator, split: str, src_path: Path, ref_path: Path, out_dir: Path, **decode) -> dict:
    """Translate a split, score it, write hypotheses and the results card atomically."""
    sources, refs = corpus.read_parallel(src_path, ref_path)
    start = time.perf_counter()
    hyps = translator.translate(sources, **decode)
    seconds = time.perf_counter() - start
    scores = score(hyps, refs)
    dcfg = translator.decode_config(**decode)
    chosen, why = translator.precision(dcfg.precision)
    tag = f"{split}.beam{dcfg.beam}" + card_suffix(len(translator.sources), chosen, bool(translator.rerankers))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / f"{tag}.hyp", "".join(h + "\n" for h in hyps).encode())
    card = {
        "split": split, "source": Path(src_path).name, "reference": Path(ref_path).name,
        **{k: scores[k] for k in ("bleu", "bleu_signature", "chrf", "chrf_signature", "sentences")},
        "lowercase_13a_bleu": score(hyps, refs, lowercase=True, tokenize="13a")["bleu"],
        **_checkpoints(translator), "training": translator.training,
        "decode": to_dict(dcfg), "decode_precision": chosen, "decode_precision_reason": why,
        **({"rerank": _rerankers(translator)} if translator.rerankers else {}),
        "sentences_per_second": round(len(sources) / seconds, 2), "decode_seconds": round(seconds, 2),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seq2seq_version": __version__, "sacrebleu_version": sacrebleu.__version__,
        "torch_version": torch.__version__, "hardware": hardware(translator.device),
        "config": _portable_config(translator.config),
        "hypotheses": f"{tag}.hyp", "card": f"{tag}.json",
    }
    text = (json.dumps(card, indent=2) + "\n").encode()
    atomic_write_bytes(out_dir / f"{tag}.json", text)      # one card per decode setting ...
    atomic_write_bytes(out_dir / f"{split}.json", text)    # ... and the latest one under the split's name
    return {**card, "card_path": str(out_dir / f"{tag}.json")}


def tune(translator, beams: list[int], penalties: list[float], data_dir: str | None = None,
         progress: Callable[[dict], None] | None = None, reranker=None, rerank_weights: list[float] = (),
         **decode) -> dict:
    """Decode the recipe's validation split for every beam size x length penalty (greedy
    once: the penalty does not apply to it), and with a `reranker` (a rerank.Scorer) for every
    weight of `rerank_weights` too. The best BLEU wins; ties go to the better chrF, then the
    smaller beam, then the smaller weight. `progress` sees each grid row as it is scored. The grid
    goes to EXPDIR/results/tune.valid.json (tune.valid.rerank.json with a reranker,
    tune.valid.ensembleN.json for an ensemble of N, EXPDIR the first model's)."""
    if not beams or not penalties:
        raise Seq2SeqError("tune needs at least one beam size and one length penalty")
    (src_path, ref_path), = split_files(translator.config, data_dir, only=["valid"]).values()
    sources, refs = corpus.read_parallel(src_path, ref_path)
    dcfg = translator.decode_config(**decode)
    chosen, why = translator.precision(dcfg.precision)
    settings = [(b, None if b == 1 else lp) for b in sorted(set(beams)) for lp in
                ([None] if b == 1 else sorted(set(penalties)))]
    grid = []
    for beam, lp in settings:
        start = time.perf_counter()
        setting = {**decode, "beam": beam, "length_penalty": lp}
        if reranker is None or beam == 1:
            outputs = {None: translator.translate(sources, **setting)}
        else:
            outputs = _reranked_outputs(translator, sources, setting, reranker, rerank_weights)
        seconds = time.perf_counter() - start
        for weight, hyps in outputs.items():
            s = score(hyps, refs)
            grid.append({"beam": beam, "length_penalty": lp, **({"rerank_weight": weight} if reranker else {}),
                         "bleu": s["bleu"], "chrf": s["chrf"],
                         "sentences_per_second": round(len(sources) / seconds, 2)})
            signature = s["bleu_signature"]
            if progress:
                progress(grid[-1])
    best = max(grid, key=lambda r: (r["bleu"], r["chrf"], -r["beam"], -(r.get("rerank_weight") or 0)))
    card = {
        "split": "valid", "source": Path(src_path).name, "reference": Path(ref_path).name,
        "sentences": len(sources), "bleu_signature": signature,
        "grid": grid, "best": best, **_checkpoints(translator), "training": translator.training,
        "decode": to_dict(dcfg), "decode_precision": chosen, "decode_precision_reason": why,
        **({"rerank": [{"checkpoint": _portable(reranker.translator.sources[0]),
                        "target_order": reranker.translator.config.model.target_order}]} if reranker else {}),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seq2seq_version": __version__, "sacrebleu_version": sacrebleu.__version__,
        "torch_version": torch.__version__, "hardware": hardware(translator.device),
    }
    name = "tune.valid" + card_suffix(len(translator.sources), chosen, reranker is not None)
    out = _results_dir(translator) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(card, indent=2) + "\n").encode())
    return {**card, "card_path": str(out)}


def _reranked_outputs(translator, sources: list[str], setting: dict, reranker, weights: list[float]
                      ) -> dict[float, list[str]]:
    """The best hypothesis of each line for each reranking weight, from one search: the combined
    score is linear in the weight, so the reranker scores each hypothesis once."""
    details = translator.translate_with_details(sources, **{**setting, "nbest": setting["beam"]})
    places = rerank.reranked_places(details)
    texts = [details[i][k].text for i, k in places]
    term = rerank.normalized(reranker.translator, [sources[i] for i, _ in places], texts, setting["length_penalty"])
    outputs = {}
    for w in weights:
        best: dict[int, tuple[float, str]] = {}
        for (i, k), text, extra in zip(places, texts, term):
            total = details[i][k].score + w * extra
            if i not in best or total > best[i][0]:
                best[i] = (total, text)
        outputs[w] = [best[i][1] if i in best else (details[i][0].text if details[i] else "")
                      for i in range(len(sources))]
    return outputs
