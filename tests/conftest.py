"""Shared fixtures and helpers: the Multi30K directory, one CLI runner, tiny model configs and
the reverse-task model that most decoding tests use. Test modules import helpers from here,
never from each other."""

import gzip
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig
from seq2seq.model import build_model
from seq2seq.serve.process import ServerProcess
from seq2seq.tokenizer import BOS, PAD

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "seq2seq.cli"]


def multi30k_path() -> Path:
    """The directory with the real Multi30K .gz files, from $SEQ2SEQ_DATA_DIR.

    Missing data skips the test on a developer machine but fails it in CI (CI=true),
    so a misconfigured CI cannot pass by silently skipping every real-data test.
    """
    value = os.environ.get("SEQ2SEQ_DATA_DIR")
    if not value:
        skip_unless_ci("SEQ2SEQ_DATA_DIR is not set; point it at a directory with the Multi30K .gz files")
    data_dir = Path(value)
    if not data_dir.is_dir():
        pytest.fail(f"SEQ2SEQ_DATA_DIR={value} is not a directory")
    return data_dir


@pytest.fixture
def multi30k_dir() -> Path:
    return multi30k_path()


def skip_unless_ci(reason: str) -> None:
    """Skip with `reason` on a developer machine; fail under CI=true, where everything the
    suite needs is installed and a skip would hide a broken set-up."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: every test must run)")
    pytest.skip(reason)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, gzip-compressed when the name ends in .gz."""
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def rows(column) -> list[list[int]]:
    """A split's side as a list of piece-id lists, read sentence by sentence through
    `column[i]`: the path training reads (a dataset.Column has no whole-file comparison)."""
    return [column[i] for i in range(len(column))]


# ---------------------------------------------------------------- slow tests

# Fixtures that train a model (tens of seconds): every test that uses one is marked slow, as are
# (explicitly) the tests that start a training or a model-loading CLI in a subprocess.
TRAINING_FIXTURES = {"reverse_model", "overfit_run", "straight_run", "server", "multi30k_model"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- the command line


def cli_env() -> dict:
    """One thread per process (tests run side by side with nothing else), unbuffered output,
    and this checkout's package first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_cli(*args, stdin: str | bytes | None = None, cwd: Path | None = None, cmd: list[str] = CLI,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `seq2seq ARGS...` in a subprocess; stdout (strict UTF-8) and stderr come back as text."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    p = subprocess.run([*cmd, *map(str, args)], input=data, capture_output=True, cwd=cwd, env=cli_env(),
                       timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode("utf-8"),
                                       p.stderr.decode("utf-8", errors="replace"))


def assert_usage_error(returncode: int, stderr: str, *fragments: str) -> None:
    """Exit 2 and exactly one stderr line, `error: ...`, naming every fragment."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------- tiny random models

V = 13  # vocabulary of the tiny models: ids 4.. are ordinary tokens


def tiny(*, enc_cell="lstm", dec_cell="lstm", bidirectional=True, enc_layers=2, dec_layers=3,
         enc_hidden=16, dec_hidden=16, embedding=8, enc_residual=False, residual="gnmt",
         residual_from=2, feed="gnmt", attention="mlp", bridge="linear", tie=False,
         share=False, dropout=0.0) -> ModelConfig:
    """A tiny ModelConfig."""
    return ModelConfig(
        encoder=EncoderConfig(cell=enc_cell, layers=enc_layers, hidden=enc_hidden, embedding=embedding,
                              bidirectional=bidirectional, dropout=dropout, residual=enc_residual),
        decoder=DecoderConfig(cell=dec_cell, layers=dec_layers, hidden=dec_hidden, embedding=embedding,
                              dropout=dropout, residual=residual, residual_from=residual_from,
                              attention_feed=feed, bridge=bridge, tie_embeddings=tie),
        attention=AttentionConfig(type=attention, hidden=12),
        share_embeddings=share)


def make(cfg, seed: int = 0):
    """The tiny model of `cfg`, seeded, in eval mode."""
    torch.manual_seed(seed)
    return build_model(cfg, V, V).eval()


def padded(lengths, width=None, seed=1):
    """Random sentences of the given lengths -> (ids (B, S), lengths (B,), mask (B, S))."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, V, (n,), generator=g)
    lengths = torch.tensor(lengths)
    return ids, lengths, torch.arange(width)[None, :] < lengths[:, None]


def src_batch():
    return padded([5, 3, 7, 1], seed=1)


def tgt_batch():
    """tgt_in starting with BOS, padded; and its mask (B, T)."""
    ids, lengths, mask = padded([4, 6, 2, 3], seed=2)
    tgt_in = torch.cat([torch.full((4, 1), BOS), ids], 1)[:, :-1]
    tgt_in[~mask] = PAD
    return tgt_in, mask


# ---------------------------------------------------------------- the server


NO_WORK_LIMIT = ["--max-request-work", 10**9, "--max-batch-work", 10**9]  # `serve` flags: decode anything


def wait_until(condition, seconds: float = 60) -> None:
    """Poll `condition` every 10 ms; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def Server(model: Path, *args, log: Path) -> ServerProcess:
    """`seq2seq serve MODEL ARGS...` on 127.0.0.1, on a port the OS chose, with the CLI's test
    environment."""
    return ServerProcess(model, *args, log=log, env=cli_env())


# ---------------------------------------------------------------- a tiny trained model

REVERSE_RECIPE = """
[data]
corpus = "files"
train = ["train.src", "train.tgt"]
valid = ["valid.src", "valid.tgt"]
test = {{ test = ["test.src", "test.tgt"] }}
max_len = 20

[tokenizer]
type = "bpe"
vocab_size = {vocab}

[model.encoder]
layers = 2
hidden = 64
embedding = 32
dropout = 0.0

[model.decoder]
layers = 2
hidden = 64
embedding = 32
dropout = 0.0
attention_feed = "{feed}"
residual_from = 2

[model.attention]
hidden = 32

[train]
batch_tokens = 600
lr = 0.01
label_smoothing = 0.0
max_steps = {steps}
valid_every = 100
seed = 1
threads = 1
schedule = "constant"
precision = "float32"

[decode]
beam = 3
precision = "float32"
max_len_a = 1.0
max_len_b = 4
"""

SYMBOLS = "abcdefghij"
# The session model trains until it has solved the task with room to spare: validation BLEU
# reaches 100 after about 900 steps on every CPU we have run it on, and best.pt is kept.
REVERSE_STEPS = 1500
# test_train's one-layer run: solved after about 400 steps.
OVERFIT_STEPS = 800
OVERFIT_SETTINGS = ["model.encoder.layers=1", "model.decoder.layers=1", "train.schedule='plateau'",
                    "train.plateau_patience=0", "train.valid_every=100", "train.keep_last=2"]


def reverse_rows(n: int, seed: int, lengths: tuple[int, int] = (2, 6)) -> tuple[list[str], list[str]]:
    """Fresh reverse-task pairs (space-separated letters, target reversed)."""
    rng = random.Random(seed)
    rows = [[rng.choice(SYMBOLS) for _ in range(rng.randint(*lengths))] for _ in range(n)]
    return [" ".join(r) for r in rows], [" ".join(reversed(r)) for r in rows]


def make_reverse_task(root: Path, n_train: int = 3000, seed: int = 0, steps: int = REVERSE_STEPS,
                      feed: str = "gnmt", vocab: int = 24) -> Path:
    """Files for the synthetic reverse task (space-separated letters, target reversed) and a
    recipe over them; returns the recipe path."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def write(name: str, n: int) -> None:
        rows = [[rng.choice(SYMBOLS) for _ in range(rng.randint(2, 6))] for _ in range(n)]
        (root / f"{name}.src").write_text("".join(" ".join(r) + "\n" for r in rows))
        (root / f"{name}.tgt").write_text("".join(" ".join(reversed(r)) + "\n" for r in rows))

    write("train", n_train)
    write("valid", 100)
    write("test", 100)
    recipe = root / "reverse.toml"
    recipe.write_text(REVERSE_RECIPE.format(steps=steps, feed=feed, vocab=vocab))
    return recipe


@pytest.fixture(scope="session")
def reverse_model(tmp_path_factory) -> Path:
    """An experiment directory with a tiny model trained to convergence on the reverse task
    (CPU, 25-50 s)."""
    from seq2seq import config
    from seq2seq.train import run
    root = tmp_path_factory.mktemp("reverse")
    recipe = make_reverse_task(root / "data")
    expdir = root / "exp"
    run(config.load(recipe), expdir)
    return expdir


@pytest.fixture(scope="session")
def multi30k_model(tmp_path_factory):
    """A small de->en model trained for 400 steps on Multi30K (under a minute): poor, but it
    says different things about different sentences, so comparing outputs means something."""
    data_dir = multi30k_path()
    root = tmp_path_factory.mktemp("m30k")
    small = {"tokenizer.vocab_size": 2000, "train.max_steps": 400, "train.valid_every": 400, "train.lr": 0.005,
             "train.batch_tokens": 1500, "train.threads": 1, "model.attention.hidden": 64,
             "train.src_word_dropout": 0, "train.tgt_word_dropout": 0}  # regularization slows a 400-step model
    for part in ("encoder", "decoder"):
        small |= {f"model.{part}.hidden": 64, f"model.{part}.embedding": 64, f"model.{part}.dropout": 0.1}
    p = run_cli("train", REPO / "recipes/multi30k_de_en_cpu.toml", "--data-dir", data_dir,
                "--out", root / "exp", *[x for k, v in small.items() for x in ("--set", f"{k}={v}")], timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    return root / "exp"
