"""Lower precision: how `auto` chooses, bf16 training steps, bf16 and int8 decoding, and the
relations that hold in every precision (batched == one at a time, teacher-forced == step by
step within the format's tolerance, per-row int8 scales). Tiny models: on a CPU without native
bf16 torch emulates it, slowly but correctly."""

import json

import pytest
import torch

from conftest import assert_usage_error, make, make_reverse_task, reverse_rows, run_cli, src_batch, tgt_batch, tiny
from seq2seq import checkpoint, config, evaluate, precision, quantize
from seq2seq.batching import Batch
from seq2seq.ensemble import Ensemble
from seq2seq.errors import Seq2SeqError
from seq2seq.model import Objective
from seq2seq.train import make_optimizer, run, train_step
from seq2seq.tokenizer import PAD
from seq2seq.translate import Translator, decode_ids

CPU = torch.device("cpu")
LOWER = ["bfloat16", "int8"]


# ---------------------------------------------------------------- choosing


@pytest.mark.parametrize("setting, flags, chosen", [
    ("auto", {"avx2", "avx512_bf16"}, "bfloat16"),
    ("auto", {"avx2", "amx_bf16"}, "bfloat16"),
    ("auto", {"avx2", "avx512f"}, "float32"),   # bf16 would be emulated: never by default
    ("auto", set(), "float32"),
    ("float32", {"avx512_bf16"}, "float32"),
    ("bfloat16", set(), "bfloat16"),            # asked for: emulated, but done
])
def test_training_precision_on_a_cpu(setting, flags, chosen):
    got, why = precision.training(setting, CPU, frozenset(flags))
    assert got == chosen and why


@pytest.mark.parametrize("capability, chosen", [((8, 0), "bfloat16"), ((9, 0), "bfloat16"),
                                                 ((7, 5), "float32")])  # T4: bf16 only emulated
def test_auto_training_precision_on_cuda(monkeypatch, capability, chosen):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert precision.training("auto", torch.device("cuda"), frozenset())[0] == chosen


def test_bf16_on_a_cuda_device_without_it_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))
    with pytest.raises(Seq2SeqError, match="train.precision"):
        precision.training("bfloat16", torch.device("cuda"))


@pytest.mark.parametrize("setting, flags, chosen", [
    ("auto", {"avx512_bf16"}, precision.AUTO_DECODE_NATIVE_BF16),
    ("auto", {"avx2"}, "float32"),
    ("int8", set(), "int8"),
    ("bfloat16", set(), "bfloat16"),
    ("float32", {"amx_bf16"}, "float32"),
])
def test_decoding_precision_on_a_cpu(setting, flags, chosen):
    assert precision.decoding(setting, CPU, frozenset(flags))[0] == chosen


def test_decoding_precision_on_cuda():
    assert precision.decoding("auto", torch.device("cuda"), frozenset({"avx512_bf16"}))[0] == "float32"
    with pytest.raises(Seq2SeqError, match="decode.precision = int8"):
        precision.decoding("int8", torch.device("cuda"))


@pytest.mark.parametrize("key", ["train.precision", "decode.precision"])
def test_a_bad_precision_in_a_recipe_names_the_key(tmp_path, key):
    recipe = make_reverse_task(tmp_path / "data", n_train=20)
    with pytest.raises(Seq2SeqError, match=key.replace(".", r"\.")) as e:
        config.load(recipe, [f"{key}='fp16'"])
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_bad_precision_on_the_command_line_is_one_line(tmp_path):
    r = run_cli("translate", tmp_path / "no-model", "--precision", "fp16")
    assert_usage_error(r.returncode, r.stderr, "--precision", "fp16")


def test_a_recipe_with_the_old_bf16_key_is_told_the_new_one(tmp_path):
    recipe = make_reverse_task(tmp_path / "data", n_train=20)
    with pytest.raises(Seq2SeqError, match=r"train\.bf16 \(renamed: use train\.precision"):
        config.load(recipe, ["train.bf16=true"])


def test_an_old_checkpoint_config_with_bf16_loads():
    old = config.to_dict(config.Config())
    del old["train"]["precision"]
    old["train"]["bf16"] = False
    assert config.from_dict(config.upgrade(old)).train.precision == "float32"
    old["train"]["bf16"] = True
    assert config.from_dict(config.upgrade(old)).train.precision == "auto"


# ---------------------------------------------------------------- training in bf16


def batch_of(cfg):
    """A fixed batch of the tiny models: source, and target in and out with its mask."""
    src, lengths, mask = src_batch()
    tgt_in, tgt_mask = tgt_batch()
    tgt_out = torch.roll(tgt_in, -1, 1).masked_fill(~tgt_mask, PAD)
    return src, lengths, mask, tgt_in, tgt_out, tgt_mask


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bf16_training_steps_keep_weights_gradients_and_adam_in_float32(cell):
    cfg = config.from_dict({"model": config.to_dict(tiny(enc_cell=cell, dec_cell=cell)),
                            "train": {"precision": "bfloat16", "lr": 0.01}})
    model32, model16 = make(cfg.model), make(cfg.model)
    model32.train(), model16.train()
    src, lengths, mask, tgt_in, tgt_out, tgt_mask = batch_of(cfg)
    loss32, _ = model32.loss(src, lengths, mask, tgt_in, tgt_out, tgt_mask, 0.1)
    with precision.autocast("bfloat16", CPU):
        loss16, _ = model16.loss(src, lengths, mask, tgt_in, tgt_out, tgt_mask, 0.1)
    assert loss16.dtype == torch.float32
    assert float(loss16.detach()) == pytest.approx(float(loss32.detach()), rel=0.02)  # the same loss, to bf16's precision

    batch = Batch(src, lengths, mask, tgt_in, tgt_out, tgt_mask, torch.arange(len(src)))
    curves = {}
    for name, model in (("float32", model32), ("bfloat16", model16)):  # 40 steps on the one batch
        optimizer = make_optimizer(model, cfg)
        curves[name] = [train_step(Objective(model), optimizer, batch, cfg, 0.01,
                                   precision.autocast(name, CPU))[0] for _ in range(40)]
    assert curves["bfloat16"][-1] < 0.8 * curves["bfloat16"][0]  # it learns the batch
    assert curves["bfloat16"][-1] == pytest.approx(curves["float32"][-1], rel=0.1)  # as float32 does
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model16.parameters())
    assert all(t.dtype == torch.float32 for s in optimizer.state.values() for k, t in s.items() if k != "step")


@torch.no_grad()
def test_teacher_forced_equals_step_by_step_under_bf16():
    model = make(tiny(dec_layers=3))
    src, lengths, mask = src_batch()
    tgt_in, _ = tgt_batch()
    with precision.autocast("bfloat16", CPU):
        forced = torch.log_softmax(model(src, lengths, mask, tgt_in).float(), -1)      # (B, T, V)
        memory, state = model.encode(src, lengths, mask)
        steps = []
        for t in range(tgt_in.size(1)):
            log_probs, state, _ = model.step(tgt_in[:, t], state, memory)
            steps.append(log_probs)
    assert torch.allclose(torch.stack(steps, 1), forced, atol=0.03)


# ---------------------------------------------------------------- decoding in bf16 and int8


def test_int8_rows_are_quantized_each_with_its_own_scale():
    torch.manual_seed(0)
    linear = torch.nn.Linear(40, 24)
    low = quantize.LowLinear(linear.weight, linear.bias, "int8")
    x = torch.randn(7, 40) * torch.logspace(-2, 2, 7)[:, None]  # rows of very different sizes
    together = low(x)
    alone = torch.cat([low(x[i:i + 1]) for i in range(7)])
    assert torch.equal(together, alone)  # exact: a row's numbers never see another row's
    relative = (together - linear(x)).norm(dim=1) / linear(x).norm(dim=1)
    assert relative.max() < 0.03  # int8 keeps every row, small or large, to about 1%


def test_int8_without_torchs_int_mm_gives_the_same_integers(monkeypatch):
    a = torch.randint(-127, 128, (5, 2100), dtype=torch.int8)
    b = torch.randint(-127, 128, (2100, 9), dtype=torch.int8)
    exact = a.long() @ b.long()
    assert torch.equal(quantize.int_mm(a, b).long(), exact)
    monkeypatch.delattr(torch, "_int_mm")
    assert torch.equal(quantize.int_mm(a, b).long(), exact)


@pytest.mark.parametrize("prec", LOWER)
@pytest.mark.parametrize("shape", [{}, {"enc_cell": "gru", "dec_cell": "gru"}, {"feed": "input_feed"},
                                   {"attention": "general"}, {"residual": "dense"}],
                         ids=["lstm", "gru", "input_feed", "general", "dense"])
@torch.no_grad()
def test_a_decoding_copy_scores_like_float32_and_leaves_the_model_alone(prec, shape):
    model = make(tiny(**shape))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src, lengths, mask = src_batch()
    tgt_in, _ = tgt_batch()
    low = quantize.for_decoding(model, prec)
    reference = torch.log_softmax(model(src, lengths, mask, tgt_in), -1)
    assert torch.allclose(torch.log_softmax(low(src, lengths, mask, tgt_in), -1), reference, atol=0.01)
    memory, state = low.encode(src, lengths, mask)  # teacher-forced == step by step in the copy too
    steps = []
    for t in range(tgt_in.size(1)):
        log_probs, state, _ = low.step(tgt_in[:, t], state, memory)
        steps.append(log_probs)
    assert torch.allclose(torch.stack(steps, 1), reference, atol=0.01)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert quantize.for_decoding(model, "float32") is model


def test_an_ensemble_decoding_copy_converts_every_member():
    models = [make(tiny(), seed=s) for s in (0, 1)]
    low = quantize.for_decoding(Ensemble(models), "int8")
    assert isinstance(low, Ensemble) and len(low.models) == 2
    assert all(isinstance(m.decoder.out, quantize.LowLinear) for m in low.models)
    assert all(isinstance(m.decoder.out, torch.nn.Linear) for m in models)


@pytest.fixture(scope="module")
def converged(reverse_model):
    translator = Translator.load(reverse_model)
    lines, _ = reverse_rows(120, seed=11)
    return translator, lines, translator.translate(lines, precision="float32")


@pytest.mark.parametrize("prec", LOWER)
def test_lower_precision_translates_like_float32_on_a_converged_model(converged, prec):
    translator, lines, reference = converged
    same = sum(a == b for a, b in zip(translator.translate(lines, precision=prec), reference))
    assert same >= 0.95 * len(lines)


@pytest.mark.parametrize("prec", LOWER)
@pytest.mark.parametrize("beam, nbest", [(1, 1), (4, 3)])
def test_batched_equals_one_at_a_time_in_lower_precision(converged, prec, beam, nbest):
    translator, lines, _ = converged
    src = translator.tokenizers.src.encode(lines[:40])
    cfg = translator.decode_config(beam=beam, nbest=nbest, precision=prec)
    model = translator.decoding_model(prec)
    batched = decode_ids(model, src, cfg, CPU)
    alone = [decode_ids(model, [s], cfg, CPU)[0] for s in src]
    assert [[h.tokens for h in n] for n in batched] == [[h.tokens for h in n] for n in alone]
    for b, a in zip(batched, alone):
        assert [h.log_prob for h in b] == pytest.approx([h.log_prob for h in a], abs=1e-3)


def test_the_decoding_copy_is_made_once(converged):
    translator, lines, _ = converged
    assert translator.decoding_model("int8") is translator.decoding_model("int8")
    assert translator.decoding_model("float32") is translator.model


# ---------------------------------------------------------------- recorded


@pytest.mark.slow
def test_precision_is_recorded_in_checkpoint_metrics_and_results_card(tmp_path):
    recipe = make_reverse_task(tmp_path / "data", n_train=300, steps=20)
    cfg = config.load(recipe, ["train.precision='bfloat16'", "train.valid_every=10", "decode.precision='int8'"])
    run(cfg, tmp_path / "exp")
    payload = checkpoint.load(tmp_path / "exp" / "checkpoints" / "last.pt")
    assert payload["precision"] == "bfloat16"
    start = [json.loads(r) for r in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()
             if json.loads(r)["type"] == "start"]
    assert start == [{**start[0], "precision": "bfloat16", "precision_reason": "train.precision = bfloat16",
                      "decode_precision": "int8", "decode_precision_reason": "decode.precision = int8"}]
    translator = Translator.load(tmp_path / "exp")
    card = evaluate.evaluate_split(translator, "test")
    assert card["training"]["precision"] == "bfloat16"
    assert card["decode_precision"] == "int8" and card["card_path"].endswith("test.beam3.int8.json")
    card32 = evaluate.evaluate_split(translator, "test", precision="float32")
    assert card32["decode_precision"] == "float32" and card32["card_path"].endswith("test.beam3.json")
    averaged = checkpoint.average([tmp_path / "exp" / "checkpoints" / "last.pt"] * 2)
    assert averaged["precision"] == "bfloat16"
