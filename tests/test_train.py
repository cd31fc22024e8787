"""The training loop on the synthetic reverse task: overfitting, metrics and checkpoints,
exact resume, refusals, non-finite steps, early stopping, torchrun (gloo, CPU) and the CLI
with SIGINT. Everything runs on CPU with one thread per process."""

import copy
import json
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CLI, OVERFIT_SETTINGS, OVERFIT_STEPS, REPO, cli_env, make_reverse_task
from seq2seq import checkpoint, config
from seq2seq import train as train_module
from seq2seq.errors import Seq2SeqError
from seq2seq.model import Seq2Seq, build_model
from seq2seq.optim import FusedAdam
from seq2seq.train import run
from seq2seq.translate import Translator

# A model small enough that a step takes a few milliseconds.
TINY = ["model.encoder.layers=1", "model.encoder.hidden=16", "model.encoder.embedding=8",
        "model.decoder.layers=2", "model.decoder.hidden=16", "model.decoder.embedding=8",
        "model.attention.hidden=8", "train.batch_tokens=200", "train.threads=1",
        "train.device='cpu'", "train.log_every=1", "decode.max_len_b=2"]


@pytest.fixture(scope="module")
def small_task(tmp_path_factory) -> Path:
    """A small reverse-task corpus; returns the recipe path."""
    return make_reverse_task(tmp_path_factory.mktemp("small") / "data", n_train=400, steps=4)


def tiny_config(recipe: Path, *overrides: str) -> config.Config:
    return config.load(recipe, [*TINY, *overrides])


def records(expdir: Path, kind: str | None = None) -> list[dict]:
    lines = (expdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["type"] == kind]


def weights(path: Path) -> dict:
    return checkpoint.load(path)["model"]


# ---------------------------------------------------------------- overfitting + artifacts

VALID_EVERY = 100  # OVERFIT_SETTINGS' train.valid_every


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory) -> Path:
    """The conftest recipe with one-layer 64-unit LSTMs (they learn the task in a few hundred
    steps) and a plateau schedule that halves the rate when validation BLEU drops;
    validated every 100 steps with keep_last = 2."""
    root = tmp_path_factory.mktemp("overfit")
    recipe = make_reverse_task(root / "data", steps=OVERFIT_STEPS)
    expdir = root / "exp"
    run(config.load(recipe, OVERFIT_SETTINGS), expdir)
    return expdir


def test_overfits_reverse_task(overfit_run):
    data = overfit_run.parent / "data"
    src = (data / "test.src").read_text().splitlines()
    ref = (data / "test.tgt").read_text().splitlines()
    out = Translator.load(overfit_run).translate(src, beam=1)  # best.pt
    exact = sum(h == r for h, r in zip(out, ref)) / len(ref)
    assert exact >= 0.95, [(s, h) for s, h, r in zip(src, out, ref) if h != r][:5]


def test_metrics_checkpoints_and_config_written(overfit_run):
    train_records = records(overfit_run, "train")
    valid_records = records(overfit_run, "valid")
    (summary,) = records(overfit_run, "summary")
    assert records(overfit_run)[-1]["type"] == "summary"
    assert [r["step"] for r in train_records] == list(range(50, OVERFIT_STEPS + 1, 50))  # log_every = 50
    assert all(math.isfinite(r["loss"]) for r in train_records)
    assert train_records[-1]["loss"] < train_records[0]["loss"] / 5
    lrs = [r["lr"] for r in train_records]
    assert lrs[0] == 0.01 and all(b <= a for a, b in zip(lrs, lrs[1:]))  # plateau only lowers it
    assert [r["step"] for r in valid_records] == list(range(VALID_EVERY, OVERFIT_STEPS + 1, VALID_EVERY))
    for r in valid_records:
        assert 0 <= r["valid_bleu"] <= 100 + 1e-6
        assert math.isfinite(r["valid_loss"]) and r["valid_ppl"] == pytest.approx(math.exp(r["valid_loss"]))
    best = max(valid_records, key=lambda r: r["valid_bleu"])
    assert summary["steps"] == OVERFIT_STEPS
    assert summary["best_bleu"] == pytest.approx(best["valid_bleu"])
    assert summary["best_step"] == best["step"]
    assert summary["skipped_steps"] == 0

    ckpts = overfit_run / "checkpoints"
    kept = [f"step_{OVERFIT_STEPS - VALID_EVERY}.pt", f"step_{OVERFIT_STEPS}.pt"]  # keep_last = 2
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(["last.pt", "best.pt", *kept])
    last, best_payload = checkpoint.load(ckpts / "last.pt"), checkpoint.load(ckpts / "best.pt")
    assert last["progress"]["step"] == OVERFIT_STEPS
    assert best_payload["progress"]["step"] == best["step"]
    for key, value in weights(ckpts / kept[-1]).items():
        assert torch.equal(value, last["model"][key])

    written = config.load(overfit_run / "config.toml")
    assert written == config.from_dict(last["config"])
    assert written.train.max_steps == OVERFIT_STEPS and written.model.decoder.layers == 1


# ---------------------------------------------------------------- exact resume


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_make_optimizer_applies_the_recipes_adam_settings(small_task, kind):
    """Training's optimizer makes the update torch's fused Adam/AdamW makes with the recipe's
    optimizer, betas and weight decay (test_optim shows FusedAdam is that kernel for any settings)."""
    cfg = tiny_config(small_task, f"train.optimizer='{kind}'", "train.weight_decay=0.1")
    torch.manual_seed(0)
    ours = build_model(cfg.model, 30, 30)
    theirs = copy.deepcopy(ours)
    optimizer = train_module.make_optimizer(ours, cfg)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    reference = cls(theirs.parameters(), lr=cfg.train.lr, betas=(0.9, 0.98), weight_decay=0.1, fused=True)
    assert isinstance(optimizer, FusedAdam)
    for model, opt in ((ours, optimizer), (theirs, reference)):  # one update: the same bits as torch's fused Adam
        for i, p in enumerate(model.parameters()):
            p.grad = torch.full_like(p, 0.01 * (i + 1))
        opt.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name


def test_validation_decodes_with_every_decode_setting(small_task, tmp_path, monkeypatch):
    """Validation BLEU picks best.pt and drives the plateau schedule: it must decode as [decode]
    says (no_repeat_ngram, min length, coverage included), only with beam = train.valid_beam."""
    from dataclasses import replace
    seen = []
    decode_ids = train_module.decode_ids

    def recording(model, src, cfg, device, *args):
        seen.append(cfg)
        return decode_ids(model, src, cfg, device, *args)

    monkeypatch.setattr(train_module, "decode_ids", recording)
    cfg = tiny_config(small_task, "train.max_steps=2", "train.valid_every=2", "train.valid_beam=2",
                      "decode.beam=4", "decode.nbest=3", "decode.no_repeat_ngram=2", "decode.min_len_a=0.5",
                      "decode.min_len_b=1", "decode.coverage_penalty=0.3", "decode.length_penalty=0.7",
                      "decode.max_len_a=1.2", "decode.batch_tokens=300")
    run(cfg, tmp_path / "exp")
    assert seen == [replace(cfg.decode, beam=2, nbest=1)]


SUBWORD_NOISE = ["tokenizer.type='unigram'", "train.subword_alpha=0.5", "train.subword_nbest=8",
                 "train.src_word_dropout=0.2", "train.tgt_word_dropout=0.2"]


@pytest.mark.parametrize("train_in, decode_in, data_noise", [("float32", "float32", []),
                                                             ("bfloat16", "int8", []),
                                                             ("float32", "float32", SUBWORD_NOISE)],
                         ids=["float32", "bfloat16-int8", "subword-sampling-word-dropout"])
def test_resume_is_exact(small_task, tmp_path, train_in, decode_in, data_noise):
    """N + M steps straight == N steps, then --resume to N + M: same weights, same losses, in
    float32 and in bf16 training (with int8 validation decoding), and with subword sampling and
    word dropout. Dropout and scheduled sampling make the RNG state matter."""
    N, M = 6, 5
    noisy = ["model.encoder.dropout=0.3", "model.decoder.dropout=0.3", "train.teacher_forcing=0.8",
             f"train.valid_every={N}", "train.schedule='plateau'", f"train.precision='{train_in}'",
             f"decode.precision='{decode_in}'", *data_noise]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(tiny_config(small_task, *noisy, f"train.max_steps={N + M}"), straight)
    run(tiny_config(small_task, *noisy, f"train.max_steps={N}"), resumed)
    assert checkpoint.load(resumed / "checkpoints" / "last.pt")["progress"]["step"] == N
    run(tiny_config(small_task, *noisy, f"train.max_steps={N + M}"), resumed, resume=True)

    a, b = weights(straight / "checkpoints" / "last.pt"), weights(resumed / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    start = checkpoint.load(resumed / "checkpoints" / f"step_{N}.pt")["model"]
    assert not all(torch.equal(start[k], a[k]) for k in a)  # the M resumed steps did change them

    def losses(expdir):
        return [(r["step"], r["epoch"], r["loss"], r["lr"]) for r in records(expdir, "train") if r["step"] > N]

    assert len(losses(straight)) == M
    assert losses(resumed) == losses(straight)
    later = [(r["step"], r["valid_bleu"], r["valid_loss"]) for r in records(straight, "valid")]
    assert [(r["step"], r["valid_bleu"], r["valid_loss"]) for r in records(resumed, "valid")] == later


def test_noise_reaches_the_training_batches(small_task, tmp_path):
    """With subword sampling and word dropout on, the same steps see other batches: the losses
    differ from the run without them (the resume test above then shows the noise is exact)."""
    plain = ["tokenizer.type='unigram'", "train.max_steps=3", "train.valid_every=3"]
    run(tiny_config(small_task, *plain), tmp_path / "plain")
    run(tiny_config(small_task, *plain, *SUBWORD_NOISE), tmp_path / "noisy")
    first = [r["loss"] for r in records(tmp_path / "plain", "train")]
    assert len(first) == 3
    assert [r["loss"] for r in records(tmp_path / "noisy", "train")] != first


@pytest.fixture
def finished_run(small_task, tmp_path) -> Path:
    expdir = tmp_path / "exp"
    run(tiny_config(small_task, "train.max_steps=2", "train.valid_every=2"), expdir)
    return expdir


def test_resume_refuses_changed_model_shape(small_task, finished_run):
    cfg = tiny_config(small_task, "train.max_steps=4", "model.decoder.hidden=24")
    with pytest.raises(Seq2SeqError, match=r"model\.decoder\.hidden") as info:
        run(cfg, finished_run, resume=True)
    assert "train.max_steps" not in str(info.value)  # allowed keys are not listed


def test_resume_allows_more_steps(small_task, finished_run):
    run(tiny_config(small_task, "train.max_steps=4", "train.valid_every=2"), finished_run, resume=True)
    assert checkpoint.load(finished_run / "checkpoints" / "last.pt")["progress"]["step"] == 4
    assert [r["steps"] for r in records(finished_run, "summary")] == [2, 4]


def test_new_run_into_used_expdir_is_refused(small_task, finished_run):
    files = ["checkpoints/last.pt", "config.toml", "metrics.jsonl"]
    before = [(finished_run / f).read_bytes() for f in files]
    with pytest.raises(Seq2SeqError, match="--resume"):
        run(tiny_config(small_task, "train.max_steps=3", "model.decoder.layers=1"), finished_run)
    assert [(finished_run / f).read_bytes() for f in files] == before


def test_changed_tokenizer_into_used_expdir_leaves_the_run_usable(small_task, finished_run):
    spm_before = (finished_run / "spm.model").read_bytes()
    for resume in (False, True):
        with pytest.raises(Seq2SeqError):
            run(tiny_config(small_task, "train.max_steps=4", "tokenizer.vocab_size=20"), finished_run, resume=resume)
    assert (finished_run / "spm.model").read_bytes() == spm_before  # not retrained
    assert Translator.load(finished_run).translate(["a b"])          # the checkpoints still translate


def test_prepare_never_retrains_the_tokenizer_of_a_trained_expdir(small_task, finished_run):
    from seq2seq.prepare import prepare
    spm_before = (finished_run / "spm.model").read_bytes()
    with pytest.raises(Seq2SeqError, match="orphan the checkpoints"):
        prepare(tiny_config(small_task, "tokenizer.vocab_size=20"), finished_run)
    assert (finished_run / "spm.model").read_bytes() == spm_before
    prepare(tiny_config(small_task), finished_run)  # the same settings still reuse it


def test_resume_without_checkpoint_is_refused(small_task, tmp_path):
    with pytest.raises(Seq2SeqError, match="no checkpoint"):
        run(tiny_config(small_task, "train.max_steps=2"), tmp_path / "empty", resume=True)


# ---------------------------------------------------------------- non-finite steps


def nan_on_steps(monkeypatch, bad_steps):
    """Make the training loss NaN on the given (1-based) training steps; validation untouched."""
    real = Seq2Seq.loss
    calls = {"n": 0}

    def loss(self, *args, **kwargs):
        loss, nll = real(self, *args, **kwargs)
        if torch.is_grad_enabled():  # a training step, not validation
            calls["n"] += 1
            if calls["n"] in bad_steps:
                loss = loss * float("nan")
        return loss, nll

    monkeypatch.setattr(Seq2Seq, "loss", loss)


def test_non_finite_step_is_skipped_and_counted(small_task, tmp_path, monkeypatch):
    nan_on_steps(monkeypatch, {3})
    expdir = tmp_path / "exp"
    result = run(tiny_config(small_task, "train.max_steps=5", "train.valid_every=5"), expdir)
    (skipped,) = records(expdir, "skipped")
    assert skipped["step"] == 3 and not math.isfinite(skipped["loss"])
    assert result["skipped_steps"] == 1 and records(expdir, "summary")[0]["skipped_steps"] == 1
    assert all(torch.isfinite(w).all() for w in weights(expdir / "checkpoints" / "last.pt").values())
    assert all(math.isfinite(r["loss"]) for r in records(expdir, "train"))


def test_consecutive_non_finite_steps_stop_training(small_task, tmp_path, monkeypatch):
    nan_on_steps(monkeypatch, set(range(3, 100)))
    expdir = tmp_path / "exp"
    with pytest.raises(Seq2SeqError, match="max_bad_steps"):
        run(tiny_config(small_task, "train.max_steps=50", "train.max_bad_steps=3", "train.valid_every=2"),
            expdir)
    assert [r["step"] for r in records(expdir, "skipped")] == [3, 4, 5]
    assert checkpoint.load(expdir / "checkpoints" / "last.pt")["progress"]["step"] == 4  # kept


# ---------------------------------------------------------------- options


def test_scheduled_sampling_trains(small_task, tmp_path):
    expdir = tmp_path / "exp"
    result = run(tiny_config(small_task, "train.teacher_forcing=0.5", "train.max_steps=3"), expdir)
    assert result["steps"] == 3 and result["skipped_steps"] == 0
    assert all(math.isfinite(r["loss"]) for r in records(expdir, "train"))


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping(small_task, tmp_path, monkeypatch, patience):
    def flat_validate(*args, **kwargs):  # a BLEU that never improves
        return {"valid_loss": 1.0, "valid_ppl": math.e, "valid_bleu": 5.0, "examples": ["x"]}

    monkeypatch.setattr(train_module, "validate", flat_validate)
    expdir = tmp_path / "exp"
    cfg = tiny_config(small_task, f"train.patience={patience}", "train.valid_every=2", "train.max_steps=40")
    result = run(cfg, expdir)
    # the first validation (step 2) is the best; `patience` more without gain stop the run
    stop = 2 * (1 + patience)
    assert result["steps"] == stop and result["best_step"] == 2
    assert [r["step"] for r in records(expdir, "valid")] == list(range(2, stop + 1, 2))
    assert checkpoint.load(expdir / "checkpoints" / "best.pt")["progress"]["step"] == 2


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_gloo(small_task, tmp_path):
    expdir = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           "--master_port", str(free_port()), *CLI[1:], "train", str(small_task), "--out", str(expdir),
           *[a for s in [*TINY, "train.max_steps=3", "train.valid_every=3"] for a in ("--set", s)]]
    proc = subprocess.run(cmd, env=cli_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = records(expdir, "summary")
    assert summary["steps"] == 3
    sums = summary["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert len(records(expdir, "valid")) == 1  # rank 0 alone validates and logs
    assert [p.name for p in checkpoint.step_checkpoints(expdir)] == ["step_3.pt"]
    payload = checkpoint.load(expdir / "checkpoints" / "last.pt")
    assert payload["progress"]["step"] == 3
    assert Translator.load(expdir).translate(["a b c"], beam=1)[0] is not None


def cli_train(recipe: Path, expdir: Path, *overrides: str) -> list[str]:
    return [*CLI, "train", str(recipe), "--out", str(expdir),
            *[a for s in [*TINY, *overrides] for a in ("--set", s)]]


@pytest.mark.slow
def test_cli_train_prints_progress(small_task, tmp_path):
    expdir = tmp_path / "exp"
    proc = subprocess.run(cli_train(small_task, expdir, "train.max_steps=4", "train.valid_every=4"),
                          env=cli_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Seq2Seq: encoder 1xbi-LSTM 16" in proc.stdout          # the model summary
    assert "step 4 " in proc.stdout and "BLEU" in proc.stdout      # the validation line
    assert "done: 4 steps" in proc.stdout
    assert "4/4" in proc.stderr                                    # the progress bar
    assert (expdir / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_cli_sigint_saves_and_exits_130(small_task, tmp_path):
    expdir = tmp_path / "exp"
    last = expdir / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cli_train(small_task, expdir, "train.max_steps=1000000", "train.valid_every=5",
                                      "train.log_every=1000"),
                            env=cli_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert last.exists(), "no checkpoint within 90 s"
        first = checkpoint.load(last)["progress"]["step"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "--resume" in err
    payload = checkpoint.load(last)
    assert payload["progress"]["step"] >= first
    assert not records(expdir, "summary")
    Translator.load(expdir)
