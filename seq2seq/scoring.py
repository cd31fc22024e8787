"""sacreBLEU BLEU and chrF, each with its signature, of hypotheses against raw references.

Only sacrebleu and the standard library: `seq2seq score` needs no model, so it never imports
torch and starts in a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from seq2seq import corpus
from seq2seq.errors import Seq2SeqError


def score(hyps: list[str], refs: list[str], lowercase: bool = False, tokenize: str | None = None) -> dict:
    """Corpus BLEU and chrF with their signatures (sacrebleu's defaults unless asked)."""
    if len(hyps) != len(refs):
        raise Seq2SeqError(f"hypotheses have {len(hyps)} lines but references have {len(refs)}")
    bleu = BLEU(lowercase=lowercase, **({"tokenize": tokenize} if tokenize else {}))
    chrf = CHRF(lowercase=lowercase)
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {"bleu": round(b.score, 2), "bleu_text": str(b), "bleu_signature": str(bleu.get_signature()),
            "chrf": round(c.score, 2), "chrf_text": str(c), "chrf_signature": str(chrf.get_signature()),
            "sentences": len(hyps)}


def corpus_bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU with sacrebleu's defaults, unrounded: what validation tracks."""
    if len(hyps) != len(refs):
        raise Seq2SeqError(f"hypotheses have {len(hyps)} lines but references have {len(refs)}")
    return BLEU().corpus_score(hyps, [refs]).score


def score_files(ref: str | Path, hyp_lines: list[str], hyp_name: str, **kwargs) -> dict:
    refs = corpus.read_lines(ref)
    if len(refs) != len(hyp_lines):
        raise Seq2SeqError(f"line counts differ: {hyp_name} has {len(hyp_lines)} lines, {ref} has {len(refs)}")
    return score(hyp_lines, refs, **kwargs)


def format_scores(s: dict) -> str:
    return f"BLEU = {s['bleu']:.2f}  ({s['bleu_signature']})\nchrF = {s['chrf']:.2f}  ({s['chrf_signature']})"
