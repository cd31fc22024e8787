"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture
def multi30k_dir() -> Path:
    """The directory with the real Multi30K .gz files, from $SEQ2SEQ_DATA_DIR.

    Missing data skips the test on a developer machine but fails it in CI (CI=true),
    so a misconfigured CI cannot pass by silently skipping every real-data test.
    """
    value = os.environ.get("SEQ2SEQ_DATA_DIR")
    if not value:
        message = "SEQ2SEQ_DATA_DIR is not set; point it at a directory with the Multi30K .gz files"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    data_dir = Path(value)
    if not data_dir.is_dir():
        pytest.fail(f"SEQ2SEQ_DATA_DIR={value} is not a directory")
    return data_dir


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

[decode]
beam = 3
max_len_a = 1.0
max_len_b = 4
"""

SYMBOLS = "abcdefghij"


def make_reverse_task(root: Path, n_train: int = 3000, seed: int = 0, steps: int = 700,
                      feed: str = "gnmt", vocab: int = 24) -> Path:
    """Files for the synthetic reverse task (space-separated letters, target reversed) and a
    recipe over them; returns the recipe path."""
    import random
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
    """An experiment directory with a tiny model trained on the reverse task (CPU, ~30 s)."""
    from seq2seq import config
    from seq2seq.train import run
    root = tmp_path_factory.mktemp("reverse")
    recipe = make_reverse_task(root / "data")
    expdir = root / "exp"
    run(config.load(recipe), expdir)
    return expdir
