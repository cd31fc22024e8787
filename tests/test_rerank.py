"""Right-to-left models and n-best reranking: a right_to_left model learns the reverse task and
translates in reading order; teacher-forced scores equal the search's own; reranking picks the
rescored best (checked by hand with a stub scorer); tune chooses the weight on val; the CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import OVERFIT_SETTINGS, OVERFIT_STEPS, make_reverse_task, run_cli
from seq2seq import config, rerank
from seq2seq.batching import collate_pieces
from seq2seq.errors import Seq2SeqError
from seq2seq.search import Hypothesis
from seq2seq.train import run
from seq2seq.translate import Translator, reading_order


@pytest.fixture(scope="module")
def r2l_model(tmp_path_factory) -> Path:
    """The one-layer reverse-task model of test_train's overfit run, trained right to left."""
    root = tmp_path_factory.mktemp("r2l")
    recipe = make_reverse_task(root / "data", steps=OVERFIT_STEPS)
    run(config.load(recipe, [*OVERFIT_SETTINGS, "model.target_order='right_to_left'"]), root / "exp")
    return root / "exp"


def test_a_right_to_left_model_learns_and_translates_in_reading_order(r2l_model):
    data = r2l_model.parent / "data"
    src = (data / "test.src").read_text().splitlines()
    ref = (data / "test.tgt").read_text().splitlines()
    out = Translator.load(r2l_model).translate(src, beam=3)
    exact = sum(h == r for h, r in zip(out, ref)) / len(ref)
    assert exact >= 0.9, [(s, h) for s, h, r in zip(src, out, ref) if h != r][:5]
    valid = [json.loads(line) for line in (r2l_model / "metrics.jsonl").read_text().splitlines()
             if '"valid"' in line]
    assert max(r["valid_bleu"] for r in valid) > 90  # validation reads the hypotheses in reading order too


def test_right_to_left_batches_and_hypotheses_turn_around():
    batch = collate_pieces([[5, 6]], [[7, 8, 9]], [0], reverse_target=True)
    assert batch.tgt_in.tolist() == [[2, 9, 8, 7]] and batch.tgt_out.tolist() == [[9, 8, 7, 3]]
    attention = torch.arange(8.0).view(4, 2)  # rows: 9, 8, 7, EOS
    (h,), = reading_order([[Hypothesis([9, 8, 7], -1.0, -1.0, attention)]], "right_to_left")
    assert h.tokens == [7, 8, 9]
    assert h.attention.tolist() == [[4.0, 5.0], [2.0, 3.0], [0.0, 1.0], [6.0, 7.0]]  # EOS's row stays last


def test_teacher_forced_log_probs_equal_the_searchs_own(reverse_model, r2l_model):
    lines = (r2l_model.parent / "data" / "test.src").read_text().splitlines()[:30]
    for model in (reverse_model, r2l_model):
        t = Translator.load(model)
        details = t.translate_with_details(lines, beam=1)
        logp, lengths = rerank.log_probs(t, lines, [d[0].text for d in details])
        assert lengths == [len(d[0].tokens) + 1 for d in details]
        assert logp == pytest.approx([d[0].log_prob for d in details], abs=1e-4)


def test_reranking_picks_the_rescored_best(reverse_model, monkeypatch):
    """A stub scorer that prefers each line's last hypothesis: with weight 0 the beam's order stays,
    with a large weight the last one wins, and scores are main + w * logP / length penalty."""
    t = Translator.load(reverse_model)
    lines = ["a b c", "d e"]
    plain = t.translate_with_details(lines, beam=3, nbest=3, length_penalty=1.0)
    assert all(len(n) == 3 for n in plain)
    stub = {line: {h.text: (-1.0 if k == 2 else -10.0) for k, h in enumerate(n)} for line, n in zip(lines, plain)}
    monkeypatch.setattr(rerank, "log_probs", lambda translator, sources, targets: (
        [stub[s][h] for s, h in zip(sources, targets)], [3] * len(targets)))  # 3 pieces: penalty (5+3)/6
    t.rerankers = [rerank.Scorer(t, 0.0)]
    assert [n[0].text for n in t.translate_with_details(lines, beam=3, length_penalty=1.0)] == \
        [n[0].text for n in plain]
    t.rerankers = [rerank.Scorer(t, 5.0)]
    reranked = t.translate_with_details(lines, beam=3, nbest=2, length_penalty=1.0)
    assert [n[0].text for n in reranked] == [n[2].text for n in plain]
    assert all(len(n) == 2 for n in reranked)
    assert reranked[0][0].score == pytest.approx(plain[0][2].score + 5.0 * -1.0 / (8 / 6))
    assert reranked[0][1].score == pytest.approx(plain[0][0].score + 5.0 * -10.0 / (8 / 6))


def test_an_ensemble_is_not_a_scorer_and_orders_do_not_mix(reverse_model, r2l_model):
    with pytest.raises(Seq2SeqError, match="one checkpoint, not an ensemble"):
        rerank.Scorer(Translator.load([reverse_model, reverse_model]), 1.0)
    with pytest.raises(Seq2SeqError, match="must write targets in one order"):
        Translator.load([reverse_model, r2l_model])
    with pytest.raises(Seq2SeqError, match="from 0 to 10"):
        rerank.Scorer(Translator.load(reverse_model), -1.0)


def test_tune_chooses_the_rerank_weight_on_val_and_evaluate_records_it(reverse_model, r2l_model, tmp_path):
    reverse_model = Path(shutil.copytree(reverse_model, tmp_path / "exp"))  # its results/ are this test's
    p = run_cli("tune", reverse_model, "--beams", "1", "3", "--length-penalties", "1.0", "--rerank", r2l_model,
                "--rerank-weights", "0", "0.5")
    assert p.returncode == 0, p.stderr
    grid = json.loads((reverse_model / "results" / "tune.valid.rerank.json").read_text())
    assert [(r["beam"], r["rerank_weight"]) for r in grid["grid"]] == [(1, None), (3, 0.0), (3, 0.5)]
    assert grid["rerank"][0]["target_order"] == "right_to_left"
    assert "then: seq2seq evaluate" in p.stdout
    p = run_cli("evaluate", reverse_model, "--split", "test", "--beam", "3", "--rerank", r2l_model,
                "--rerank-weight", "0.5")
    assert p.returncode == 0, p.stderr
    card = json.loads((reverse_model / "results" / "test.beam3.rerank.json").read_text())
    assert card["rerank"][0]["weight"] == 0.5 and card["rerank"][0]["checkpoint"].endswith("best.pt")
    assert card["bleu"] > 90


def test_translate_with_rerank_and_its_errors(reverse_model, r2l_model, tmp_path):
    p = run_cli("translate", reverse_model, "--beam", "3", "--rerank", r2l_model, "--rerank-weight", "0.5",
                stdin="a b c\nd e f g\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["c b a", "g f e d"]
    p = run_cli("translate", reverse_model, "--rerank", r2l_model, "--rerank-weight", "1", "--rerank-weight", "2",
                stdin="a b\n")
    assert p.returncode == 2 and "2 --rerank-weight for 1 --rerank models" in p.stderr
