"""Plots, attention maps, the Python API, checkpoint averaging and ensembles."""

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from seq2seq import Translator, checkpoint
from seq2seq.config import DecodeConfig
from seq2seq.errors import Seq2SeqError
from seq2seq.translate import decode_ids

ROOT = Path(__file__).resolve().parent.parent
LINES = ["a b c", "j i h g f", "c", "d d e e", "", "b a"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------- plots


def test_learning_curves_png_from_a_real_run(reverse_model: Path, tmp_path: Path):
    out = tmp_path / "curves.png"
    result = run_cli("plot", str(reverse_model), str(reverse_model), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert png_size(out) == (1300, 380)          # figsize (13, 3.8) at 100 dpi
    assert out.stat().st_size > 20_000           # three panels with lines, not a blank canvas
    minutes = tmp_path / "minutes.png"
    assert run_cli("plot", str(reverse_model), "-o", str(minutes), "--x", "minutes").returncode == 0
    assert png_size(minutes) == (1300, 380)


def test_plot_of_a_directory_without_metrics_is_an_error(tmp_path: Path):
    result = run_cli("plot", str(tmp_path), "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "metrics.jsonl" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_the_error_says_how_to_install(monkeypatch, tmp_path: Path):
    import builtins
    from seq2seq import plot
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(Seq2SeqError, match=r"pip install 'seq2seq\[plot\]'"):
        plot.attention_map([[1.0]], ["a"], ["b"], tmp_path / "x.png")


def test_attention_command_png_and_json(reverse_model: Path, tmp_path: Path):
    out = tmp_path / "map.png"
    result = run_cli("attention", str(reverse_model), "a b c d", "-o", str(out))
    assert result.returncode == 0, result.stderr
    width, height = png_size(out)
    assert width >= 400 and height >= 300
    result = run_cli("attention", str(reverse_model), "a b c d", "--json")
    assert result.returncode == 0, result.stderr
    import json
    data = json.loads(result.stdout)
    matrix = torch.tensor(data["attention"])
    assert matrix.shape == (len(data["target_tokens"]), len(data["source_tokens"]))
    assert torch.allclose(matrix.sum(1), torch.ones(matrix.size(0)), atol=1e-5)
    assert data["translation"] == "d c b a"


def test_translate_attention_dir_writes_one_map_per_nonempty_line(reverse_model: Path, tmp_path: Path):
    maps = tmp_path / "maps"
    result = run_cli("translate", str(reverse_model), "--attention-dir", str(maps), stdin="a b\n\nc d e\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["b a", "", "e d c"]
    assert sorted(p.name for p in maps.iterdir()) == ["0.png", "2.png"]


# ---------------------------------------------------------------- attention and the Python API


def test_attention_rows_sum_to_one_over_real_source_and_are_zero_on_padding(reverse_model: Path):
    translator = Translator.load(reverse_model)
    src = translator.tokenizers.src.encode([line for line in LINES if line])
    for beam in (1, 3):
        hyps = decode_ids(translator.model, src, DecodeConfig(beam=beam), translator.device, return_attention=True)
        longest = max(len(s) for s in src) + 1
        for s, (h, *_) in zip(src, hyps):
            real = len(s) + 1                                    # pieces + EOS
            assert h.attention.shape == (len(h.tokens) + 1, longest)
            assert torch.allclose(h.attention[:, :real].sum(1), torch.ones(len(h.tokens) + 1), atol=1e-5)
            assert torch.all(h.attention[:, real:] == 0)


def test_translator_matches_the_cli(reverse_model: Path):
    translator = Translator.load(reverse_model)
    for beam in ("1", "4"):
        cli = run_cli("translate", str(reverse_model), "--beam", beam, stdin="".join(l + "\n" for l in LINES))
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.splitlines() == translator.translate(LINES, beam=int(beam))


def test_readme_python_example_runs(reverse_model: Path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"exp/multi30k_de_en_cpu"', repr(str(reverse_model)))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["translations"], list) and len(namespace["translations"]) == 1
    assert namespace["details"][0][0].attention is not None


# ---------------------------------------------------------------- averaging and ensembles


def test_average_of_two_copies_is_identical(reverse_model: Path, tmp_path: Path):
    best = reverse_model / "checkpoints" / "best.pt"
    avg = checkpoint.average([best, best])
    original = checkpoint.load(best)["model"]
    assert avg["model"].keys() == original.keys()
    assert all(torch.equal(avg["model"][k], original[k]) for k in original)


def test_average_of_two_checkpoints_is_their_mean_and_translates(reverse_model: Path, tmp_path: Path):
    steps = checkpoint.step_checkpoints(reverse_model)
    assert len(steps) >= 2
    a, b = checkpoint.load(steps[-2])["model"], checkpoint.load(steps[-1])["model"]
    out = tmp_path / "avg.pt"
    result = run_cli("average", str(reverse_model), "--last", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    avg = checkpoint.load(out)["model"]
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(avg[k], (a[k] + b[k]) / 2, atol=1e-7), k
    assert not torch.equal(a["decoder.out.weight"], b["decoder.out.weight"])   # a real average
    assert Translator.load(out).translate(["a b c"]) == ["c b a"]


def test_average_refuses_different_shapes(reverse_model: Path, tmp_path: Path):
    best = reverse_model / "checkpoints" / "best.pt"
    payload = checkpoint.load(best)
    payload["model"]["decoder.out.bias"] = torch.zeros(3)
    other = tmp_path / "other.pt"
    checkpoint.save(payload, other)
    result = run_cli("average", str(best), str(other), "-o", str(tmp_path / "avg.pt"))
    assert result.returncode == 2
    assert "decoder.out.bias" in result.stderr and "shape" in result.stderr
    assert not (tmp_path / "avg.pt").exists()


def test_ensemble_of_a_model_with_itself_translates_like_the_model(reverse_model: Path):
    single = Translator.load(reverse_model)
    double = Translator.load([reverse_model, reverse_model])
    for beam in (1, 3):
        assert double.translate(LINES, beam=beam) == single.translate(LINES, beam=beam)
    cli = run_cli("translate", str(reverse_model), str(reverse_model), stdin="a b c\n")
    assert cli.returncode == 0 and cli.stdout == "c b a\n"


def test_ensemble_results_card_goes_to_the_first_models_experiment(reverse_model: Path, tmp_path: Path):
    """Checkpoint paths travel as a list: a directory named with " + " is no separator."""
    from seq2seq.evaluate import evaluate_split
    odd = tmp_path / "a + b" / "exp"
    (odd / "checkpoints").mkdir(parents=True)
    shutil.copy(reverse_model / "checkpoints" / "best.pt", odd / "checkpoints" / "best.pt")
    ensemble = Translator.load([odd, reverse_model])
    assert ensemble.sources == [str(odd / "checkpoints" / "best.pt"), str(reverse_model / "checkpoints" / "best.pt")]
    card = evaluate_split(ensemble, "test", beam=1)
    assert Path(card["card_path"]) == odd / "results" / "test.beam1.ensemble2.json"
    assert card["checkpoint"] == "exp/checkpoints/best.pt"
    assert card["ensemble"] == ["exp/checkpoints/best.pt", "exp/checkpoints/best.pt"]
    assert card["training"]["ensemble_of"] == 2


def test_ensemble_tune_and_evaluate_keep_their_own_cards(reverse_model: Path, tmp_path: Path):
    """An ensemble's grid and cards never overwrite the first model's own (same split and beam)."""
    exp = Path(shutil.copytree(reverse_model, tmp_path / "exp"))
    for models in ([exp], [exp, reverse_model]):
        p = run_cli("tune", *models, "--beams", "1", "2", "--length-penalties", "1.0")
        assert p.returncode == 0, p.stderr
        assert f"then: seq2seq evaluate {' '.join(map(str, models))} --beam" in p.stdout
        assert run_cli("evaluate", *models, "--split", "test", "--beam", "2").returncode == 0
    results = exp / "results"
    assert {"tune.valid.json", "tune.valid.ensemble2.json", "test.beam2.json", "test.beam2.ensemble2.json"} <= {
        p.name for p in results.iterdir()}
    assert "ensemble" not in json.loads((results / "tune.valid.json").read_text())
    assert json.loads((results / "tune.valid.ensemble2.json").read_text())["ensemble"] == [
        "exp/checkpoints/best.pt", f"{reverse_model.name}/checkpoints/best.pt"]
    card = json.loads((results / "test.beam2.ensemble2.json").read_text())
    assert card["training"]["ensemble_of"] == 2 and card["hypotheses"] == "test.beam2.ensemble2.hyp"


def test_ensemble_needs_one_vocabulary(reverse_model: Path, tmp_path: Path):
    import io
    import random
    import sentencepiece as spm
    from seq2seq.tokenizer import Vocab
    payload = checkpoint.load(reverse_model / "checkpoints" / "best.pt")
    size = payload["model"]["decoder.out.bias"].numel()
    rng = random.Random(0)  # same vocabulary size, other pieces: the weights still fit
    text = [" ".join(rng.choice("klmnopqrst") for _ in range(6)) for _ in range(500)]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buffer, model_type="bpe",
                                   vocab_size=size, pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
    other_vocab = Vocab.from_bytes(buffer.getvalue(), "other")
    assert len(other_vocab) == size
    payload["tokenizer"] = {"joint": True, "src": other_vocab.data, "tgt": other_vocab.data,
                            "checksums": {"src": other_vocab.checksum, "tgt": other_vocab.checksum}}
    other = tmp_path / "other.pt"
    checkpoint.save(payload, other)
    assert Translator.load(other).translate(["k l m"])  # loads on its own
    with pytest.raises(Seq2SeqError, match="one src vocabulary"):
        Translator.load([reverse_model, other])


def test_average_refuses_another_architecture_of_the_same_shapes(reverse_model: Path, tmp_path: Path):
    best = reverse_model / "checkpoints" / "best.pt"
    payload = checkpoint.load(best)
    payload["config"]["model"]["decoder"]["residual"] = "dense"   # same parameter shapes, other model
    other = tmp_path / "other.pt"
    checkpoint.save(payload, other)
    with pytest.raises(Seq2SeqError, match="model config differs"):
        checkpoint.average([best, other])


def test_an_average_translates_but_cannot_be_resumed(reverse_model: Path, tmp_path: Path):
    import shutil
    from seq2seq import config
    from seq2seq.train import run
    expdir = tmp_path / "exp"
    shutil.copytree(reverse_model, expdir)
    checkpoint.save(checkpoint.average([expdir / "checkpoints" / "best.pt"]), expdir / "checkpoints" / "last.pt")
    cfg = config.from_dict(checkpoint.load(expdir / "checkpoints" / "best.pt")["config"])
    with pytest.raises(Seq2SeqError, match="cannot be resumed|no training state"):
        run(cfg, expdir, resume=True)


def test_ensemble_step_is_the_log_of_the_mean_probability():
    from seq2seq.config import DecoderConfig, EncoderConfig, ModelConfig
    from seq2seq.ensemble import Ensemble
    from seq2seq.model import build_model
    cfg = ModelConfig(encoder=EncoderConfig(hidden=16, embedding=8), decoder=DecoderConfig(hidden=16, embedding=8))
    torch.manual_seed(0)
    a, b = build_model(cfg, 20, 20).eval(), build_model(cfg, 20, 20).eval()
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]])
    lengths, mask = torch.tensor([4, 3]), src != 0
    tokens = torch.tensor([2, 2])
    ensemble = Ensemble([a, b])
    memories, states = ensemble.encode(src, lengths, mask)
    log_probs, _, attn = ensemble.step(tokens, states, memories)
    la, _, aa = a.step(tokens, *reversed(a.encode(src, lengths, mask)))
    lb, _, ab = b.step(tokens, *reversed(b.encode(src, lengths, mask)))
    assert not torch.allclose(la, lb)
    assert torch.allclose(log_probs, torch.log((la.exp() + lb.exp()) / 2), atol=1e-6)
    assert torch.allclose(attn, (aa + ab) / 2)


@pytest.mark.parametrize("beam", [1, 3])
def test_ensemble_decodes_a_batch_like_one_sentence_at_a_time(beam):
    """Sentences of different lengths finish at different steps and leave the batch; the
    ensemble's memories must shrink with them (Ensemble.select)."""
    from dataclasses import replace

    from seq2seq.config import DecoderConfig, EncoderConfig, ModelConfig
    from seq2seq.ensemble import Ensemble
    from seq2seq.model import build_model
    cfg = ModelConfig(encoder=EncoderConfig(hidden=16, embedding=8),
                      decoder=DecoderConfig(hidden=16, embedding=8, attention_feed="input_feed"))
    torch.manual_seed(0)
    ensemble = Ensemble([build_model(cfg, 30, 30).eval(), build_model(cfg, 30, 30).eval()])
    src = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15], [16, 17, 18, 19, 20, 21, 22, 23, 24, 25], [26, 27]]
    dcfg = replace(DecodeConfig(), beam=beam, nbest=beam, max_len_a=1.0, max_len_b=2)
    batched = decode_ids(ensemble, src, dcfg, torch.device("cpu"))
    alone = [decode_ids(ensemble, [s], dcfg, torch.device("cpu"))[0] for s in src]
    lengths = {len(h.tokens) for nbest in batched for h in nbest}
    assert len(lengths) > 1  # hypotheses of several lengths: rows really left the batch at different steps
    for b, a in zip(batched, alone):
        assert [h.tokens for h in b] == [h.tokens for h in a]
        assert [h.log_prob for h in b] == pytest.approx([h.log_prob for h in a], abs=1e-5)


def test_results_card_training_fields_for_trained_averaged_and_unvalidated_checkpoints(reverse_model, tmp_path):
    from seq2seq.translate import _training_of
    best = checkpoint.load(reverse_model / "checkpoints" / "best.pt")
    trained = _training_of(best)
    assert trained["steps"] >= trained["best_step"] > 0 and trained["best_valid_bleu"] > 0
    assert trained["minutes"] > 0
    steps = checkpoint.step_checkpoints(reverse_model)[-2:]
    newest = checkpoint.load(steps[-1])["progress"]
    assert _training_of(checkpoint.average(steps)) == {
        "averaged_from": [p.name for p in steps], "steps": newest["step"],
        "minutes": round(newest["elapsed"] / 60, 2), "precision": "float32"}
    assert _training_of(checkpoint.average(steps[::-1]))["steps"] == newest["step"]  # the newest, not the last named
    assert _training_of(checkpoint.average(steps))["minutes"] > 0
    fresh = {**best, "progress": {**best["progress"], "best_bleu": -1.0, "best_step": 0}}
    assert _training_of(fresh)["best_valid_bleu"] is None and _training_of(fresh)["best_step"] is None
