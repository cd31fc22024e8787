"""Translator: raw text in, detokenized text out.

The one decoding path used by the CLI's `translate`, by validation during training, by
`evaluate`, by tests and by Python users:

    from seq2seq import Translator
    t = Translator.load("exp/de_en")            # experiment dir or checkpoint file
    t.translate(["Ein Hund rennt."], beam=5)    # -> ["A dog is running."]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from seq2seq import checkpoint, precision, quantize, rerank, search
from seq2seq.batching import collate_src, eval_batches
from seq2seq.config import Config, DecodeConfig, check_ranges, from_dict, upgrade
from seq2seq.ensemble import Ensemble
from seq2seq.errors import Seq2SeqError
from seq2seq.model import Seq2Seq, build_model
from seq2seq.search import Hypothesis
from seq2seq.tokenizer import BOS, EOS, Tokenizers, Vocab


def length_limits(src_lengths: Tensor, cfg: DecodeConfig) -> tuple[Tensor, Tensor]:
    """Per-sentence (max_lens, min_lens) from `a * source pieces + b`."""
    n = src_lengths.float()
    max_lens = (cfg.max_len_a * n + cfg.max_len_b).floor().long().clamp(min=1)
    min_lens = torch.minimum((cfg.min_len_a * n + cfg.min_len_b).floor().long(), max_lens)
    return max_lens, min_lens


class Stopped(Exception):
    """Decoding was given up between two steps because its `stop` callable said so."""


@torch.no_grad()
def decode_batch(model: Seq2Seq | Ensemble, src: list[list[int]], cfg: DecodeConfig, device: torch.device,
                 return_attention: bool = False, stop: Callable[[], bool] | None = None) -> list[list[Hypothesis]]:
    """Search one batch of source piece ids; one n-best list per sentence (nbest = 1 for greedy).
    `stop` is asked before every step; when it says True, Stopped is raised."""
    ids, lengths, mask = (t.to(device) for t in collate_src(src))

    def step(tokens: Tensor, st: _Rows) -> tuple[Tensor, _Rows, Tensor]:
        if stop is not None and stop():
            raise Stopped()
        return _step(model, tokens, st)

    memory, state = model.encode(ids, lengths, mask)
    max_lens, min_lens = length_limits(lengths - 1, cfg)
    B = len(src)
    if cfg.beam == 1:
        hyps = search.greedy(step, _Rows(state, memory, B), B, BOS, EOS,
                             max_lens, min_lens=min_lens, no_repeat_ngram=cfg.no_repeat_ngram,
                             return_attention=return_attention, reorder=lambda st, index: _reorder(model, st, index))
        return [[h] for h in hyps]
    K = cfg.beam
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,) beam k of sentence b is row b*K + k
    start = _Rows(model.reorder(state, rows), model.select(memory, rows), B * K)
    return search.beam_search(
        step, lambda st, index: _reorder(model, st, index), start, B, K,
        BOS, EOS, max_lens, min_lens=min_lens, length_penalty_alpha=cfg.length_penalty,
        coverage_beta=cfg.coverage_penalty, src_mask=mask, nbest=cfg.nbest, no_repeat_ngram=cfg.no_repeat_ngram,
        return_attention=return_attention)


class _Rows(NamedTuple):
    """What search carries for the model: the decoder state and the memory of the same rows."""

    state: Any
    memory: Any
    rows: int


def _step(model: Seq2Seq | Ensemble, tokens: Tensor, st: _Rows) -> tuple[Tensor, _Rows, Tensor]:
    log_probs, state, attn = model.step(tokens, st.state, st.memory)
    return log_probs, st._replace(state=state), attn


def _reorder(model: Seq2Seq | Ensemble, st: _Rows, index: Tensor) -> _Rows:
    """Beams move within their sentence (the memory stays); a shorter index drops finished sentences."""
    memory = st.memory if index.numel() == st.rows else model.select(st.memory, index)
    return _Rows(model.reorder(st.state, index), memory, index.numel())


def reading_order(hyps: list[list[Hypothesis]], target_order: str) -> list[list[Hypothesis]]:
    """Hypotheses of a right_to_left model turned to reading order (tokens and attention rows;
    the last attention row, EOS's, stays last); left_to_right ones as they are."""
    if target_order == "left_to_right":
        return hyps

    def turned(h: Hypothesis) -> Hypothesis:
        attention = None if h.attention is None else torch.cat([h.attention[:-1].flip(0), h.attention[-1:]])
        return replace(h, tokens=h.tokens[::-1], attention=attention)

    return [[turned(h) for h in nbest] for nbest in hyps]


def decode_ids(model: Seq2Seq | Ensemble, src: list[list[int]], cfg: DecodeConfig, device: torch.device,
               return_attention: bool = False, stop: Callable[[], bool] | None = None) -> list[list[Hypothesis]]:
    """Decode many sentences in length-sorted batches of `cfg.batch_tokens` source tokens
    (beam rows included); results come back in input order."""
    was_training = model.training
    model.eval()
    out: list[list[Hypothesis]] = [[] for _ in src]
    budget = max(1, cfg.batch_tokens // cfg.beam)
    try:
        for indices in eval_batches([len(s) + 1 for s in src], budget):
            for i, hyps in zip(indices, decode_batch(model, [src[i] for i in indices], cfg, device,
                                                     return_attention, stop)):
                out[i] = hyps
    finally:
        model.train(was_training)
    return out


@dataclass
class Translation:
    text: str
    tokens: list[str]            # target subwords
    src_tokens: list[str]        # source subwords (EOS excluded)
    log_prob: float
    score: float
    attention: Tensor | None     # (len(tokens) + 1, len(src_tokens) + 1): rows and columns include EOS


class Translator:
    """Text in, text out, for one model or an ensemble of models sharing their vocabularies."""

    def __init__(self, model: Seq2Seq | Ensemble, tokenizers: Tokenizers, config: Config,
                 device: torch.device, sources: list[str] | None = None, training: dict | None = None):
        self.model, self.tokenizers, self.config = model.eval(), tokenizers, config
        self.device = device
        self.sources = list(sources or [])  # the checkpoint file of each model (several for an ensemble)
        self.training = training or {}  # how far the (first) checkpoint had trained, for results cards
        self._decoding: dict[str, Seq2Seq | Ensemble] = {"float32": self.model}  # by decode precision
        self.rerankers: list[rerank.Scorer] = []  # models that rescore the beam's n-best (seq2seq.rerank)

    @classmethod
    def load(cls, path: str | Path | list, device: str | torch.device = "cpu") -> "Translator":
        """From an experiment directory (best, else last checkpoint) or a checkpoint file; a
        list of them makes an ensemble (the first one's config gives the decode defaults)."""
        paths = list(path) if isinstance(path, (list, tuple)) else [path]
        if not paths:
            raise Seq2SeqError("no model given")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise Seq2SeqError("--device cuda: no CUDA device is available")
        loaded = [_load_one(p, device) for p in paths]
        model, tokenizers, config, source, training = loaded[0]
        sources = [x[3] for x in loaded]
        for other in loaded[1:]:
            if other[2].model.target_order != config.model.target_order:
                raise Seq2SeqError(f"{other[3]}: an ensemble's models must write targets in one order, but this "
                                   f"one is {other[2].model.target_order} and {source} {config.model.target_order} "
                                   "(rescore with --rerank instead)")
            for side in ("src", "tgt"):
                if getattr(other[1], side).checksum != getattr(tokenizers, side).checksum:
                    raise Seq2SeqError(f"{other[3]}: an ensemble needs one {side} vocabulary, but its "
                                       f"SentencePiece model differs from that of {source}")
        if len(loaded) > 1:
            model = Ensemble([m for m, *_ in loaded])
            training = {"ensemble_of": len(loaded), **training}
        return cls(model, tokenizers, config, device, sources, training)

    def decode_config(self, **overrides) -> DecodeConfig:
        cfg = replace(self.config.decode, **{k: v for k, v in overrides.items() if v is not None})
        check_ranges(cfg, "decode.")
        if cfg.nbest > cfg.beam:
            raise Seq2SeqError(f"--nbest ({cfg.nbest}) must be <= --beam ({cfg.beam})")
        return cfg

    def precision(self, setting: str) -> tuple[str, str]:
        """The format `decode.precision = setting` decodes in on this translator's device, and why."""
        return precision.decoding(setting, self.device)

    def decoding_model(self, setting: str) -> Seq2Seq | Ensemble:
        """The model as it decodes in `setting` (a bf16 or int8 copy is made once and kept)."""
        chosen, _ = self.precision(setting)
        if chosen not in self._decoding:
            self._decoding[chosen] = quantize.for_decoding(self.model, chosen)
        return self._decoding[chosen]

    def translate(self, lines: list[str], **decode) -> list[str]:
        """One output line per input line; empty or whitespace-only input gives ''."""
        return [nbest[0].text if nbest else "" for nbest in self.translate_with_details(lines, **decode)]

    def translate_with_details(self, lines: list[str], return_attention: bool = False,
                               stop: Callable[[], bool] | None = None, **decode) -> list[list[Translation]]:
        """n-best Translations per line ([] for an empty line). A line longer than
        decode.max_source_len pieces is translated in chunks that are rejoined, so memory
        stays bounded however long the input; it gets one (1-best) Translation without attention.
        `stop` (asked before every search step) gives up with Stopped when it says True. With
        `rerankers`, the beam's whole n-best is rescored (seq2seq.rerank) and `score` is the
        combined one."""
        cfg = wanted = self.decode_config(**decode)
        if self.rerankers:
            cfg = replace(cfg, nbest=cfg.beam)
        keep = [i for i, line in enumerate(lines) if line.strip()]
        src = self.tokenizers.src.encode([lines[i] for i in keep])
        L = cfg.max_source_len
        chunks = [(j, s[c:c + L]) for j, s in enumerate(src) for c in range(0, max(len(s), 1), L)]
        hyps = reading_order(decode_ids(self.decoding_model(cfg.precision), [c for _, c in chunks], cfg,
                                        self.device, return_attention, stop), self.config.model.target_order)
        per_line: list[list[tuple[list[int], list[Hypothesis]]]] = [[] for _ in src]
        for (j, chunk), nbest in zip(chunks, hyps):
            per_line[j].append((chunk, nbest))
        out: list[list[Translation]] = [[] for _ in lines]
        for i, parts in zip(keep, per_line):
            out[i] = self._translations(parts[0][0], parts[0][1]) if len(parts) == 1 else [self._joined(parts)]
        if self.rerankers:
            out = self._reranked(lines, out, wanted)
        return out

    def _reranked(self, lines: list[str], out: list[list[Translation]], cfg: DecodeConfig) -> list[list[Translation]]:
        """Each line's n-best in the order of the combined score, cut to cfg.nbest."""
        places = rerank.reranked_places(out)
        scores = rerank.combined([out[i][k].score for i, k in places], [lines[i] for i, _ in places],
                                 [out[i][k].text for i, k in places], self.rerankers, cfg.length_penalty)
        for (i, k), score in zip(places, scores):
            out[i][k] = replace(out[i][k], score=score)
        return [sorted(nbest, key=lambda t: -t.score)[:cfg.nbest] for nbest in out]

    def _translations(self, src: list[int], nbest: list[Hypothesis]) -> list[Translation]:
        texts = self.tokenizers.tgt.decode([h.tokens for h in nbest])
        src_pieces = self.tokenizers.src.pieces(src)
        return [Translation(text, self.tokenizers.tgt.pieces(h.tokens), src_pieces, h.log_prob, h.score,
                            None if h.attention is None else h.attention[:, :len(src) + 1])
                for text, h in zip(texts, nbest)]

    def _joined(self, parts: list[tuple[list[int], list[Hypothesis]]]) -> Translation:
        best = [nbest[0] for _, nbest in parts]
        texts = self.tokenizers.tgt.decode([h.tokens for h in best])
        return Translation(" ".join(t for t in texts if t), [p for h in best for p in self.tokenizers.tgt.pieces(h.tokens)],
                           [p for s, _ in parts for p in self.tokenizers.src.pieces(s)],
                           sum(h.log_prob for h in best), sum(h.score for h in best), None)


def _load_one(path: str | Path, device: torch.device) -> tuple[Seq2Seq, Tokenizers, Config, str, dict]:
    ckpt_path = checkpoint.resolve(path)
    payload = checkpoint.load(ckpt_path, mmap=True)  # the optimizer state is never read
    config = from_dict(upgrade(payload["config"]))
    tokenizers = _tokenizers_from_payload(payload, ckpt_path)
    model = build_model(config.model, len(tokenizers.src), len(tokenizers.tgt), init=False)  # weights follow
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError:
        raise Seq2SeqError(f"{ckpt_path}: its weights do not fit its config and vocabularies") from None
    return model.to(device), tokenizers, config, str(ckpt_path), _training_of(payload)


def _training_of(payload: dict) -> dict:
    """Steps, training minutes and best validation BLEU at the time the checkpoint was written.
    An averaged checkpoint says what it averaged, and the steps and minutes of training behind
    the newest of them."""
    if "averaged_from" in payload:
        newest = max((p for p in payload.get("averaged_progress") or [] if p), key=lambda p: p.get("step", 0),
                     default={})
        return {"averaged_from": [Path(p).name for p in payload["averaged_from"]],
                "steps": newest.get("step"), "precision": checkpoint.trained_in(payload),
                "minutes": round(newest["elapsed"] / 60, 2) if "elapsed" in newest else None}
    p = payload.get("progress") or {}
    validated = p.get("best_step", 0) > 0  # else best_bleu is still its -1 placeholder
    return {"steps": p.get("step"), "minutes": round(p.get("elapsed", 0.0) / 60, 2),
            "precision": checkpoint.trained_in(payload),
            "best_valid_bleu": p.get("best_bleu") if validated else None,
            "best_step": p.get("best_step") if validated else None}


def _tokenizers_from_payload(payload: dict, ckpt_path: Path) -> Tokenizers:
    """The checkpoint carries its SentencePiece models; an experiment directory beside it
    must hold the same ones (else the checkpoint and the directory do not belong together)."""
    tok = payload["tokenizer"]
    models = {side: Vocab.from_bytes(tok[side], f"{ckpt_path}:{side}") for side in ("src", "tgt")}
    if ckpt_path.parent.name == "checkpoints":
        expdir = ckpt_path.parent.parent
        names = ({"src": "spm.model", "tgt": "spm.model"} if tok["joint"]
                 else {"src": "spm.src.model", "tgt": "spm.tgt.model"})
        for side, name in names.items():
            on_disk = expdir / name
            if on_disk.is_file() and Vocab.load(on_disk).checksum != models[side].checksum:
                raise Seq2SeqError(f"{ckpt_path}: its SentencePiece model differs from {on_disk} (the "
                                   "checkpoint belongs to another experiment, or the tokenizer was retrained)")
    return Tokenizers(models["src"], models["tgt"] if not tok["joint"] else models["src"])
