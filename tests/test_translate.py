"""Tests for seq2seq.translate on the tiny reverse-task model (the session fixture `reverse_model`).

Model-level invariants of decoding rather than golden outputs: beam 1 == greedy, every returned
log-probability equals the model's own teacher-forced score, batched == one at a time, and the
Translator's line-in/line-out contract. A trained model must also actually solve its task.
"""

import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import reverse_rows
from seq2seq import search
from seq2seq.batching import collate_src
from seq2seq.config import DecodeConfig
from seq2seq.errors import Seq2SeqError
from seq2seq.tokenizer import BOS, EOS
from seq2seq.translate import Translator, decode_ids

CPU = torch.device("cpu")


# Sources of mixed lengths, including ones the model never saw (1 letter, 9-12 letters) so that
# some hypotheses run into the max-length limit and the batch really holds different lengths.
SOURCES = reverse_rows(12, seed=101)[0] + reverse_rows(4, seed=102, lengths=(9, 12))[0] + ["a", "j j j j"]


@pytest.fixture(scope="module")
def translator(reverse_model) -> Translator:
    return Translator.load(reverse_model)


@pytest.fixture(scope="module")
def src_ids(translator) -> list[list[int]]:
    return translator.tokenizers.src.encode(SOURCES)


def decode_cfg(translator: Translator, **kw) -> DecodeConfig:
    return replace(translator.config.decode, **kw)


def tokens_of(nbests) -> list[list[tuple[int, ...]]]:
    return [[tuple(h.tokens) for h in nbest] for nbest in nbests]


# ---------------------------------------------------------------------------- search invariants


@torch.no_grad()
def test_beam_one_equals_greedy(translator, src_ids, monkeypatch):
    """Beam search with K = 1 finds greedy's hypotheses, through decode_batch's own wiring:
    greedy's call is answered by beam_search with the same step, state and reorder."""
    cfg = decode_cfg(translator, beam=1)
    greedy = decode_ids(translator.model, src_ids, cfg, CPU)

    def beam_of_one(step, state, batch_size, bos, eos, max_lens, *, reorder, **settings):
        calls.append(batch_size)
        nbests = search.beam_search(step, reorder, state, batch_size, 1, bos, eos, max_lens, **settings)
        return [nbest[0] for nbest in nbests]

    calls = []
    monkeypatch.setattr(search, "greedy", beam_of_one)
    beam = decode_ids(translator.model, src_ids, cfg, CPU)
    assert sum(calls) == len(src_ids)
    assert [h[0].tokens for h in greedy] == [h[0].tokens for h in beam]
    for g, b in zip(greedy, beam):
        assert g[0].log_prob == pytest.approx(b[0].log_prob, abs=1e-5)


@torch.no_grad()
def test_returned_log_probs_equal_teacher_forced_rescoring(translator, src_ids):
    alpha = 1.0
    cfg = decode_cfg(translator, beam=5, nbest=3, length_penalty=alpha)
    nbests = decode_ids(translator.model, src_ids, cfg, CPU)
    model = translator.model.eval()
    checked = 0
    for s, nbest in zip(src_ids, nbests):
        assert len(nbest) == 3
        ids, lengths, mask = collate_src([s])
        for h in nbest:
            tgt_in = torch.tensor([[BOS] + h.tokens])                      # (1, T)
            tgt_out = torch.tensor([h.tokens + [EOS]])                     # (1, T)
            log_probs = torch.log_softmax(model(ids, lengths, mask, tgt_in).float(), dim=-1)  # (1, T, V)
            rescored = float(log_probs.gather(2, tgt_out[:, :, None]).sum())
            assert h.log_prob == pytest.approx(rescored, abs=1e-4), (s, h.tokens)
            assert h.score == pytest.approx(h.log_prob / search.length_penalty(len(h.tokens) + 1, alpha),
                                            abs=1e-4)
            checked += 1
    assert checked == 3 * len(src_ids)


@pytest.mark.parametrize("beam, nbest", [(1, 1), (4, 3)])
def test_batched_equals_one_at_a_time(translator, src_ids, beam, nbest):
    cfg = decode_cfg(translator, beam=beam, nbest=nbest)
    batched = decode_ids(translator.model, src_ids, cfg, CPU)
    alone = [decode_ids(translator.model, [s], cfg, CPU)[0] for s in src_ids]
    assert tokens_of(batched) == tokens_of(alone)
    # Scores to float tolerance: a batch's shape changes the kernels' summation order (up to ~1e-5
    # on this converged model, more on some CPUs); a wrong row or state would be off by far more.
    for b, a in zip(batched, alone):
        assert [h.log_prob for h in b] == pytest.approx([h.log_prob for h in a], abs=1e-4)
        assert [h.score for h in b] == pytest.approx([h.score for h in a], abs=1e-4)


def test_small_decode_batches_give_the_same_results(translator, src_ids):
    """Several length-sorted batches come back in input order."""
    one_batch = decode_ids(translator.model, src_ids, decode_cfg(translator, beam=3), CPU)
    many = decode_ids(translator.model, src_ids, decode_cfg(translator, beam=3, batch_tokens=30), CPU)
    assert tokens_of(one_batch) == tokens_of(many)


def test_nbest_lists_are_sorted_and_distinct(translator, src_ids):
    nbests = decode_ids(translator.model, src_ids, decode_cfg(translator, beam=5, nbest=5), CPU)
    assert len(nbests) == len(src_ids)
    for nbest in nbests:
        assert len(nbest) == 5
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in nbest}) == 5
        assert all(EOS not in h.tokens and BOS not in h.tokens for h in nbest)


# ---------------------------------------------------------------------------- Translator


def test_translate_one_output_per_line_and_empty_lines(translator):
    lines = ["a b c", "", "   ", "\t", "d e f g", " \t "]
    out = translator.translate(lines, beam=3)
    assert len(out) == len(lines)
    assert out[1] == out[2] == out[3] == out[5] == ""
    assert [out[0], out[4]] == translator.translate(["a b c", "d e f g"], beam=3)
    details = translator.translate_with_details(lines, beam=3, nbest=2)
    assert [len(d) for d in details] == [2, 0, 0, 0, 2, 0]
    assert translator.translate([]) == []
    assert translator.translate(["", " "]) == ["", ""]


def test_translate_solves_the_reverse_task(translator):
    src, tgt = reverse_rows(200, seed=2024)
    for beam in (1, 3):
        hyps = translator.translate(src, beam=beam)
        accuracy = sum(h == r for h, r in zip(hyps, tgt)) / len(src)
        assert accuracy >= 0.9, f"beam {beam}: exact match {accuracy:.2f}; e.g. {src[0]!r} -> {hyps[0]!r}"


def test_load_from_expdir_and_from_checkpoint_file(reverse_model, translator):
    lines = reverse_rows(10, seed=7)[0]
    expected = translator.translate(lines, beam=2)
    best = reverse_model / "checkpoints" / "best.pt"
    assert [Path(p) for p in translator.sources] == [best]
    from_file = Translator.load(best)
    assert [Path(p) for p in from_file.sources] == [best]
    assert from_file.translate(lines, beam=2) == expected
    assert Translator.load(str(reverse_model)).translate(lines, beam=2) == expected


def test_nbest_larger_than_beam_is_a_user_error(translator):
    with pytest.raises(Seq2SeqError, match="nbest"):
        translator.translate(["a b"], beam=2, nbest=3)


# ---------------------------------------------------------------------------- load errors


def other_sentencepiece_model(path: Path) -> None:
    """A valid SentencePiece model with the same special ids but a different vocabulary."""
    import sentencepiece as spm
    lines = [" ".join(random.Random(i).choice("klmnopqrstuvwxyz") for _ in range(8)) for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(path.with_suffix("")),
                                   model_type="bpe", vocab_size=30, pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   minloglevel=2, num_threads=1)


@pytest.mark.parametrize("target", ["expdir", "checkpoint"])
def test_load_refuses_an_expdir_whose_spm_model_was_replaced(reverse_model, tmp_path, target):
    expdir = tmp_path / "exp"
    (expdir / "checkpoints").mkdir(parents=True)
    shutil.copy(reverse_model / "checkpoints" / "best.pt", expdir / "checkpoints" / "best.pt")
    other_sentencepiece_model(expdir / "spm.model")
    assert (expdir / "spm.model").read_bytes() != (reverse_model / "spm.model").read_bytes()
    path = expdir if target == "expdir" else expdir / "checkpoints" / "best.pt"
    with pytest.raises(Seq2SeqError, match="spm.model"):
        Translator.load(path)


def test_load_accepts_a_copied_expdir_with_its_own_spm_model(reverse_model, tmp_path):
    """The control for the test above: the copy itself is fine."""
    expdir = tmp_path / "exp"
    (expdir / "checkpoints").mkdir(parents=True)
    shutil.copy(reverse_model / "checkpoints" / "best.pt", expdir / "checkpoints" / "best.pt")
    shutil.copy(reverse_model / "spm.model", expdir / "spm.model")
    assert Translator.load(expdir).translate(["a b c"]) == Translator.load(reverse_model).translate(["a b c"])


@pytest.mark.parametrize("kind", ["text", "empty", "random_bytes", "truncated", "foreign_torch", "missing"])
def test_load_refuses_a_file_that_is_not_a_checkpoint(reverse_model, tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "truncated":
        data = (reverse_model / "checkpoints" / "best.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign_torch":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(Seq2SeqError, match="model.pt"):
        Translator.load(path)


def test_load_refuses_a_directory_without_checkpoints(tmp_path):
    with pytest.raises(Seq2SeqError, match="train first"):
        Translator.load(tmp_path)
