"""n-best reranking: the beam's hypotheses rescored by other models, e.g. one trained right to left.

A right-to-left model sees each hypothesis from its end, where a left-to-right beam is weakest
(Liu et al. 2016; Sennrich et al. 2016's WMT systems). For each line the main model's beam gives
its finished hypotheses; every scorer computes log P(hypothesis | source) by teacher forcing (in
its own target order, with its own vocabulary); the combined score is

    main score + sum_i  w_i * log P_i(hypothesis) / length_penalty(len_i, alpha)

where the main score is the beam's own (log-probability over the same GNMT length penalty) and
the weights w_i are chosen on validation data (`seq2seq tune --rerank MODEL`). The best combined
score wins. Lines long enough to be translated in chunks are not reranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from seq2seq.batching import collate_pieces, eval_batches
from seq2seq.ensemble import Ensemble
from seq2seq.errors import Seq2SeqError
from seq2seq.search import length_penalty

if TYPE_CHECKING:
    from seq2seq.translate import Translator


@dataclass
class Scorer:
    translator: Translator   # one model (not an ensemble); its own vocabularies and target order
    weight: float

    def __post_init__(self):
        if isinstance(self.translator.model, Ensemble):
            raise Seq2SeqError(f"{self.translator.sources[0]}: a reranking model must be one checkpoint, "
                               "not an ensemble (give each as its own --rerank)")
        if not 0.0 <= self.weight <= 10.0:
            raise Seq2SeqError(f"--rerank weight must be from 0 to 10, got {self.weight:g}")


@torch.no_grad()
def log_probs(translator: Translator, sources: list[str], targets: list[str],
              batch_tokens: int = 4000) -> tuple[list[float], list[int]]:
    """Teacher-forced log P(target | source) under the translator's model (float32), summed over
    its target pieces and EOS, and those lengths; targets in the model's own order."""
    model, tok = translator.model, translator.tokenizers
    src, tgt = tok.src.encode(sources), tok.tgt.encode(targets)
    reverse = translator.config.model.right_to_left
    scores, lengths = [0.0] * len(src), [len(t) + 1 for t in tgt]
    for indices in eval_batches([max(len(s), len(t)) + 1 for s, t in zip(src, tgt)], batch_tokens):
        b = collate_pieces([src[i] for i in indices], [tgt[i] for i in indices], indices, reverse)
        b = b.to(translator.device)
        logits = model(b.src, b.src_lengths, b.src_mask, b.tgt_in)                      # (B, T, V)
        token = logits.float().log_softmax(-1).gather(-1, b.tgt_out.unsqueeze(-1)).squeeze(-1)  # (B, T)
        for i, total in zip(indices, token.masked_fill(~b.tgt_mask, 0.0).sum(1).tolist()):
            scores[i] = total
    return scores, lengths


def reranked_places(nbest_lists: list[list]) -> list[tuple[int, int]]:
    """(line, hypothesis) of every hypothesis that reranking can move: lines with more than one."""
    return [(i, k) for i, nbest in enumerate(nbest_lists) for k in range(len(nbest) if len(nbest) > 1 else 0)]


def normalized(translator: Translator, sources: list[str], texts: list[str], alpha: float) -> list[float]:
    """log P(text | source) under the translator's model over the GNMT length penalty: the term a
    reranker's weight multiplies."""
    logp, lengths = log_probs(translator, sources, texts)
    return [lp / float(length_penalty(n, alpha)) for lp, n in zip(logp, lengths)]


def combined(main_scores: list[float], sources: list[str], texts: list[str], scorers: list[Scorer],
             alpha: float) -> list[float]:
    """The combined score of each (source, hypothesis text) pair."""
    total = list(main_scores)
    for scorer in scorers:
        if scorer.weight != 0.0:
            for i, term in enumerate(normalized(scorer.translator, sources, texts, alpha)):
                total[i] += scorer.weight * term
    return total
