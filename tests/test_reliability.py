"""Faults and bad input: killed trainings, full disks, non-finite weights, hostile text.

Each guarantee in docs/reliability.md names the test here (or elsewhere) that proves it.
"""

import errno
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CLI, cli_env, make_reverse_task
from seq2seq import checkpoint, cli, config, corpus
from seq2seq.errors import Seq2SeqError
from seq2seq.translate import Translator, decode_ids

TRAIN = [*CLI, "train"]
STEPS = 60
SETTINGS = ["--set", f"train.max_steps={STEPS}", "--set", "train.valid_every=4", "--set", "train.log_every=1",
            "--set", "model.decoder.dropout=0.3", "--set", "model.encoder.dropout=0.3"]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "training ended early"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def weights(path: Path) -> dict:
    return checkpoint.load(path)["model"]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return make_reverse_task(tmp_path_factory.mktemp("faults"), n_train=600)


@pytest.fixture(scope="module")
def straight_run(task, tmp_path_factory) -> Path:
    expdir = tmp_path_factory.mktemp("straight") / "exp"
    subprocess.run(TRAIN + [str(task), "--out", str(expdir), *SETTINGS], check=True, env=cli_env(),
                   capture_output=True, timeout=300)
    return expdir


# ---------------------------------------------------------------- training survives faults


def logged_step(expdir: Path) -> int:
    path = expdir / "metrics.jsonl"
    steps = [0]
    for line in (path.read_text().split("\n") if path.exists() else []):
        if '"type": "train"' in line:
            steps.append(int(line.split('"step": ')[1].split(",")[0]))
    return max(steps)


def test_sigkill_at_a_random_moment_then_resume_matches_a_straight_run(task, straight_run, tmp_path):
    expdir = tmp_path / "exp"
    kill_at = random.Random().randint(6, STEPS - 10)  # a random step: mid-step, mid-validation or mid-write
    proc = subprocess.Popen(TRAIN + [str(task), "--out", str(expdir), *SETTINGS], env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while logged_step(expdir) < kill_at:
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    for path in (expdir / "checkpoints").glob("*.pt"):  # every complete file loads; no half-written ones
        checkpoint.load(path)
    assert checkpoint.load(expdir / "checkpoints" / "last.pt")["progress"]["step"] < STEPS
    stale = expdir / "checkpoints" / ".last.pt.tmp99999"   # what a write killed before its rename leaves
    stale.write_bytes(b"half a checkpoint")
    resumed = subprocess.run(TRAIN + [str(task), "--out", str(expdir), "--resume", *SETTINGS], env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert not stale.exists()
    a, b = weights(straight_run / "checkpoints" / "last.pt"), weights(expdir / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the straight run"
    train_steps = [json.loads(line)["step"] for line in (expdir / "metrics.jsonl").read_text().splitlines()
                   if '"type": "train"' in line]
    assert train_steps == list(range(1, STEPS + 1))  # replayed steps are logged once, not twice


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_last_and_says_how_to_resume(task, tmp_path, sig, code):
    expdir = tmp_path / "exp"
    proc = subprocess.Popen(TRAIN + [str(task), "--out", str(expdir), *SETTINGS[2:],
                                     "--set", "train.max_steps=100000"],
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(expdir / "checkpoints" / "last.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "--resume" in err and "Traceback" not in err
    payload = checkpoint.load(expdir / "checkpoints" / "last.pt")
    assert payload["progress"]["step"] >= 4


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    payload = {"model": {"w": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(Seq2SeqError, match="parameter w is not finite"):
        checkpoint.save(payload, tmp_path / "bad.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_clear_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(Seq2SeqError, match="No space left on device") as info:
        checkpoint.save({"model": {"w": torch.ones(2)}}, target)
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"old"            # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_an_unwritable_expdir_is_a_one_line_error(task, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = subprocess.run(TRAIN + [str(task), "--out", str(blocker / "exp"), *SETTINGS], env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- bad input loses nothing


def run_translate(model: Path, data: bytes, *extra: str) -> tuple[int, bytes, str]:
    """`seq2seq translate` in this process (fast enough for property tests), file in, file out."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.write_bytes(data)
        import contextlib
        import io
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(["translate", str(model), "-i", str(src), "-o", str(out), "--beam", "2", *extra])
        return rc, (out.read_bytes() if out.exists() else b""), err.getvalue()


def expected_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40), max_size=8))
def test_translate_any_unicode_keeps_one_line_per_line(reverse_model, lines):
    data = "".join(line.replace("\n", " ") + "\n" for line in lines).encode("utf-8", errors="surrogatepass")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:  # lone surrogates are not UTF-8 text; the bytes test covers them
        return
    rc, out, err = run_translate(reverse_model, data)
    assert rc == 0, err
    assert out.count(b"\n") == expected_lines(data)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_translate_any_bytes_is_translated_or_named(reverse_model, data):
    rc, out, err = run_translate(reverse_model, data)
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    if valid:
        assert rc == 0, err
        assert out.count(b"\n") == expected_lines(data)
    else:
        assert rc == 2 and out == b""
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and "invalid UTF-8" in err
    rc, out, err = run_translate(reverse_model, data, "--encoding-errors", "replace")
    assert rc == 0, err
    assert out.count(b"\n") == expected_lines(data)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_corpus_reader_any_bytes(data):
    try:
        lines = corpus.split_lines(data, "f")
    except Seq2SeqError as e:
        bad_line = None
        for number, raw in enumerate(data.split(b"\n"), 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                bad_line = number
                break
        assert bad_line is not None and str(e).startswith(f"f:{bad_line}:")
    else:
        assert len(lines) == expected_lines(data)
        assert all("\n" not in line for line in lines)


def test_hostile_lines_keep_their_count(reverse_model):
    data = b"a\x00b\nc\x01\x1b[31md\n" + b"a b " * 2500 + b"\n\n  \n\xe2\x80\xa8x\nlast without newline"
    rc, out, err = run_translate(reverse_model, data)
    assert rc == 0, err
    assert out.count(b"\n") == 7 == expected_lines(data)
    rc, out, err = run_translate(reverse_model, b"")
    assert rc == 0 and out == b""


def test_a_very_long_line_is_translated_in_bounded_chunks(reverse_model):
    translator = Translator.load(reverse_model)
    line = " ".join("abcdefghij"[i % 10] for i in range(3000))   # ~3000 pieces
    (t,), = translator.translate_with_details([line], beam=2, max_source_len=50)
    assert t.attention is None and len(t.src_tokens) == len(translator.tokenizers.src.encode([line])[0])
    ids = translator.tokenizers.src.encode([line])[0]
    chunks = [ids[i:i + 50] for i in range(0, len(ids), 50)]
    cfg = translator.decode_config(beam=2, max_source_len=50)
    hyps = decode_ids(translator.model, chunks, cfg, translator.device)  # every chunk came back, in order
    texts = translator.tokenizers.tgt.decode([h[0].tokens for h in hyps])
    assert t.text == " ".join(x for x in texts if x)


def test_recipe_syntax_error_names_the_line(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nlr = 0.1\nmax_steps = = 3\n")
    with pytest.raises(Seq2SeqError, match=r"r\.toml: invalid TOML: .*line 3"):
        config.load(recipe)
