"""Tests for seq2seq.prepare (and `seq2seq prepare`): real Multi30K de-en end to end, the cache,
and the checks and filters on user files (small synthetic corpora)."""

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import rows, run_cli, write_bytes
from seq2seq import config, corpus
from seq2seq import prepare as prepare_module
from seq2seq.errors import Seq2SeqError
from seq2seq.prepare import prepare, sample_lines, split_files
from seq2seq.tokenizer import Tokenizers

RECIPE = Path(__file__).parent.parent / "recipes" / "multi30k_de_en.toml"
# BPE trains in about a second on all of Multi30K; the default unigram takes much longer.
SMALL = ["tokenizer.type=bpe", "tokenizer.vocab_size=1000"]
SPLITS = ("train", "valid", "test_2016_flickr")


class Log(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def has(self, fragment: str) -> bool:
        return any(fragment in m for m in self)


def mtimes(expdir: Path) -> dict[str, int]:
    return {str(p.relative_to(expdir)): p.stat().st_mtime_ns for p in expdir.rglob("*") if p.is_file()}


def dropped(log: Log) -> int:
    m = [re.search(r"dropped (\d+) empty and (\d+) over-long", x) for x in log]
    return sum(int(x[1]) + int(x[2]) for x in m if x)


@pytest.fixture(scope="module")
def _memo() -> dict:
    return {}


@pytest.fixture
def real(multi30k_dir, _memo, tmp_path_factory):
    """Multi30K de-en prepared once per module: (prepared, expdir, log, data_dir)."""
    if "real" not in _memo:
        expdir = tmp_path_factory.mktemp("m30k") / "exp"
        log = Log()
        prepared = prepare(config.load(RECIPE, SMALL), expdir, str(multi30k_dir), log=log)
        _memo["real"] = (prepared, expdir, log, multi30k_dir)
    return _memo["real"]


# ---------------------------------------------------------------------------- real Multi30K


def test_writes_models_cache_and_metadata(real):
    prepared, expdir, log, _ = real
    assert (expdir / "spm.model").is_file()
    assert not (expdir / "spm.src.model").exists() and not (expdir / "spm.tgt.model").exists()
    assert sorted(p.name for p in (expdir / "cache").iterdir()) == sorted(
        [f"{s}.{end}" for s in SPLITS for end in ("json", "src.ids", "src.len", "tgt.ids", "tgt.len")]
        + ["digests.json"])
    meta = json.loads((expdir / "prepare.json").read_text())
    assert meta["checksums"] == prepared.tokenizers.checksums()
    assert meta["source"]["tokenizer"]["vocab_size"] == 1000
    assert prepared.tokenizers.joint and len(prepared.tokenizers.src) == 1000
    assert log.has("training SentencePiece (bpe, 1000, joint) on 58000 training sentences")


def test_split_sizes(real):
    prepared, _, log, _ = real
    assert list(prepared.splits) == list(SPLITS)
    assert len(prepared.splits["valid"]) == 1014
    assert len(prepared.splits["test_2016_flickr"]) == 1000
    assert len(prepared.splits["train"]) == 29000 - dropped(log)
    assert len(prepared.splits["train"]) > 28900
    for name, split in prepared.splits.items():
        assert len(split.src) == len(split.tgt) == (len(split.refs) if name != "train" else len(split))
    assert prepared.splits["train"].refs == []  # raw lines are kept only for the scored splits


def test_files_are_the_recipe_languages(real):
    prepared, _, _, data_dir = real
    assert prepared.files["train"] == (data_dir / "train.de.gz", data_dir / "train.en.gz")
    assert prepared.files["valid"] == (data_dir / "val.de.gz", data_dir / "val.en.gz")
    assert prepared.files["test_2016_flickr"] == (data_dir / "test_2016_flickr.de.gz",
                                                  data_dir / "test_2016_flickr.en.gz")


@pytest.mark.parametrize("name, split", [("valid", "val"), ("test_2016_flickr", "test_2016_flickr")])
def test_eval_splits_are_complete_and_refs_are_raw_targets(real, name, split):
    prepared, _, _, data_dir = real
    de = corpus.read_lines(data_dir / f"{split}.de.gz")
    en = corpus.read_lines(data_dir / f"{split}.en.gz")
    s = prepared.splits[name]
    assert s.refs == en
    assert rows(s.src) == prepared.tokenizers.src.encode(de)  # source is German, in file order
    assert rows(s.tgt) == prepared.tokenizers.tgt.encode(en)


def test_train_split_is_the_whole_corpus_encoded_at_once_and_filtered(real):
    """Streaming, chunked encoding gives exactly what encoding the whole file at once and
    dropping empty and over-long pairs gives (what prepare did before it streamed)."""
    prepared, _, log, data_dir = real
    tok = prepared.tokenizers
    de, en = corpus.read_lines(data_dir / "train.de.gz"), corpus.read_lines(data_dir / "train.en.gz")
    src, tgt = tok.src.encode(de), tok.tgt.encode(en)
    keep = [i for i in range(len(de)) if de[i].strip() and en[i].strip() and max(len(src[i]), len(tgt[i])) <= 100]
    train = prepared.splits["train"]
    assert len(train) == len(keep) == 29000 - dropped(log)
    assert rows(train.src) == [src[i] for i in keep] and rows(train.tgt) == [tgt[i] for i in keep]
    assert train.sizes().tolist() == [max(len(src[i]), len(tgt[i])) + 1 for i in keep]


def test_second_prepare_reuses_everything(real):
    prepared, expdir, _, data_dir = real
    before = mtimes(expdir)
    log = Log()
    again = prepare(config.load(RECIPE, SMALL), expdir, str(data_dir), log=log)
    assert mtimes(expdir) == before  # SentencePiece not retrained, no cache rewritten
    assert log.has("reusing SentencePiece")
    assert not log.has("training SentencePiece") and not log.has("encoded")
    assert again.tokenizers.checksums() == prepared.tokenizers.checksums()
    for name in SPLITS:
        assert rows(again.splits[name].src) == rows(prepared.splits[name].src)
        assert again.splits[name].refs == prepared.splits[name].refs


def test_unchanged_files_are_not_read_again(real, monkeypatch):
    """Every training start runs prepare: over unchanged files it must not hash gigabytes again."""
    prepared, expdir, _, data_dir = real
    hashed = []
    digest = prepare_module.file_digest
    monkeypatch.setattr(prepare_module, "file_digest", lambda path: hashed.append(path) or digest(path))
    again = prepare(config.load(RECIPE, SMALL), expdir, str(data_dir), log=Log())
    assert hashed == []
    assert rows(again.splits["train"].src) == rows(prepared.splits["train"].src)


def test_settings_that_do_not_affect_data_reuse_the_cache(real, tmp_path):
    _, expdir, _, data_dir = real
    copy = shutil.copytree(expdir, tmp_path / "exp")
    log = Log()
    prepare(config.load(RECIPE, SMALL + ["model.decoder.layers=2", "train.lr=0.01"]), copy, str(data_dir), log=log)
    assert log.has("reusing") and not log.has("encoded")


def test_changing_vocab_size_retrains_and_invalidates_the_cache(real, tmp_path):
    prepared, expdir, _, data_dir = real
    copy = shutil.copytree(expdir, tmp_path / "exp")
    log = Log()
    new = prepare(config.load(RECIPE, ["tokenizer.type=bpe", "tokenizer.vocab_size=800"]), copy, str(data_dir),
                  log=log)
    assert log.has("training SentencePiece (bpe, 800")
    assert all(log.has(f"encoded {name}:") for name in SPLITS)
    assert len(new.tokenizers.src) == 800
    assert new.tokenizers.checksums() != prepared.tokenizers.checksums()
    assert max(i for s in new.splits["valid"].src for i in s) < 800
    assert rows(new.splits["valid"].src) == new.tokenizers.src.encode(
        corpus.read_lines(data_dir / "val.de.gz"))
    assert json.loads((copy / "prepare.json").read_text())["checksums"] == new.tokenizers.checksums()


def test_changing_max_len_re_encodes_train_only(real, tmp_path):
    _, expdir, _, data_dir = real
    copy = shutil.copytree(expdir, tmp_path / "exp")
    log = Log()
    new = prepare(config.load(RECIPE, SMALL + ["data.max_len=20"]), copy, str(data_dir), log=log)
    assert log.has("reusing SentencePiece")
    assert [m.split(":")[1] for m in log if "encoded" in m] == [" encoded train"]
    assert dropped(log) > 0
    assert len(new.splits["train"]) == 29000 - dropped(log)
    assert all(len(s) <= 20 and len(t) <= 20 for s, t in zip(new.splits["train"].src, new.splits["train"].tgt))
    assert len(new.splits["valid"]) == 1014  # never filtered


@pytest.mark.parametrize("damage", ["truncated ids", "garbage lengths", "garbage json", "missing ids"])
def test_damaged_cache_is_rebuilt(real, tmp_path, damage):
    prepared, expdir, _, data_dir = real
    copy = shutil.copytree(expdir, tmp_path / "exp")
    cache = copy / "cache"
    if damage == "truncated ids":
        data = (cache / "valid.tgt.ids").read_bytes()
        (cache / "valid.tgt.ids").write_bytes(data[:-2])
    elif damage == "garbage lengths":  # the same size, lengths that no longer add up to the ids
        (cache / "valid.src.len").write_bytes(bytes([255]) * (cache / "valid.src.len").stat().st_size)
    elif damage == "garbage json":
        (cache / "valid.json").write_bytes(b"garbage")
    else:
        (cache / "valid.src.ids").unlink()
    (copy / "spm.model").write_bytes(b"garbage")
    log = Log()
    new = prepare(config.load(RECIPE, SMALL), copy, str(data_dir), log=log)
    assert log.has("training SentencePiece")  # a damaged model is retrained, not trusted
    assert log.has("encoded valid")
    assert rows(new.splits["valid"].src) == rows(prepared.splits["valid"].src)  # same data, same deterministic model
    assert rows(new.splits["valid"].tgt) == rows(prepared.splits["valid"].tgt)


def test_a_failed_write_leaves_no_split_behind(real, tmp_path, monkeypatch):
    """A full disk (or any error) while a split is written: the temporary arrays go, no NAME.json
    is written, and the next prepare builds the split again."""
    from seq2seq import dataset
    prepared, expdir, _, data_dir = real
    copy = shutil.copytree(expdir, tmp_path / "exp")
    for f in (copy / "cache").glob("test_2016_flickr.*"):
        f.unlink()

    def full_disk(self, src, tgt):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset.SplitWriter, "add", full_disk)
    with pytest.raises(OSError, match="No space left"):
        prepare(config.load(RECIPE, SMALL), copy, str(data_dir), log=Log())
    assert sorted(f.name for f in (copy / "cache").iterdir() if "test_2016" in f.name) == []
    monkeypatch.undo()
    again = prepare(config.load(RECIPE, SMALL), copy, str(data_dir), log=Log())
    assert rows(again.splits["test_2016_flickr"].src) == rows(prepared.splits["test_2016_flickr"].src)


def test_split_files_for_other_languages(multi30k_dir):
    cfg = config.load(RECIPE, ["data.src=fr", "data.tgt=cs", 'data.test_splits=["val"]'])
    files = split_files(cfg, str(multi30k_dir), download=False)
    assert files == {"train": (multi30k_dir / "train.fr.gz", multi30k_dir / "train.cs.gz"),
                     "valid": (multi30k_dir / "val.fr.gz", multi30k_dir / "val.cs.gz"),
                     "val": (multi30k_dir / "val.fr.gz", multi30k_dir / "val.cs.gz")}


# ---------------------------------------------------------------------------- user files


WORDS = ["ab", "cd", "efg", "hi", "jab", "dc", "gfe", "ih", "baj", "aa", "bb", "cc"]


def sentences(n: int, seed: int) -> list[str]:
    import random
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]


def write_lines(path: Path, lines: list[str]) -> Path:
    data = "".join(x + "\n" for x in lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def files_recipe(root: Path, train=("train.src", "train.tgt"), valid=("valid.src", "valid.tgt"),
                 test=("test.src", "test.tgt"), max_len: int = 30) -> Path:
    q = lambda pair: f'["{pair[0]}", "{pair[1]}"]'
    recipe = root / "files.toml"
    recipe.write_text(f'[data]\ncorpus = "files"\ntrain = {q(train)}\nvalid = {q(valid)}\n'
                      f'test = {{ t1 = {q(test)} }}\nmax_len = {max_len}\n\n'
                      '[tokenizer]\ntype = "bpe"\nvocab_size = 40\n')
    return recipe


@pytest.fixture
def user_files(tmp_path) -> Path:
    """A small clean parallel corpus (target = source reversed) and its recipe."""
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("train", 300, 0), ("valid", 20, 1), ("test", 10, 2)):
        src = sentences(n, seed)
        write_lines(data / f"{name}.src", src)
        write_lines(data / f"{name}.tgt", [" ".join(reversed(s.split())) for s in src])
    files_recipe(data)
    return data


def test_user_files_drop_empty_and_long_pairs_from_train_only(user_files, tmp_path):
    train_src = corpus.read_lines(user_files / "train.src")
    train_tgt = corpus.read_lines(user_files / "train.tgt")
    long = " ".join(["efg hi jab"] * 30)
    bad = {3: ("", "ab cd"), 10: ("ab cd", "   "), 50: ("\t", ""), 77: (long, "ab"), 120: ("cd", long)}
    for i, (s, t) in bad.items():
        train_src[i], train_tgt[i] = s, t
    write_lines(user_files / "train.src", train_src)
    write_lines(user_files / "train.tgt", train_tgt)
    valid_src = corpus.read_lines(user_files / "valid.src")
    valid_tgt = corpus.read_lines(user_files / "valid.tgt")
    valid_src[2], valid_tgt[2], valid_src[5], valid_tgt[5] = "", "", long, long
    write_lines(user_files / "valid.src", valid_src)
    write_lines(user_files / "valid.tgt", valid_tgt)

    log = Log()
    p = prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=log)
    assert log.has("dropped 3 empty and 2 over-long (> data.max_len = 30 pieces) training pairs")
    keep = [i for i in range(len(train_src)) if i not in bad]
    assert rows(p.splits["train"].tgt) == p.tokenizers.tgt.encode([train_tgt[i] for i in keep])
    assert rows(p.splits["train"].src) == p.tokenizers.src.encode([train_src[i] for i in keep])
    # valid and test keep every line, in order, empty and long ones included
    assert p.splits["valid"].refs == valid_tgt
    assert rows(p.splits["valid"].src) == p.tokenizers.src.encode(valid_src)
    assert rows(p.splits["valid"].src)[2] == [] and len(rows(p.splits["valid"].src)[5]) > 30
    assert p.splits["t1"].refs == corpus.read_lines(user_files / "test.tgt")
    assert list(p.splits) == ["train", "valid", "t1"]


def test_clean_user_files_drop_nothing(user_files, tmp_path):
    log = Log()
    p = prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=log)
    assert not log.has("dropped")
    assert len(p.splits["train"]) == 300
    assert rows(p.splits["train"].tgt) == p.tokenizers.tgt.encode(corpus.read_lines(user_files / "train.tgt"))


def test_gz_user_files_work_like_plain_ones(user_files, tmp_path):
    for name in ("train", "valid", "test"):
        for side in ("src", "tgt"):
            write_lines(user_files / f"{name}.{side}.gz", corpus.read_lines(user_files / f"{name}.{side}"))
    gz = files_recipe(user_files, ("train.src.gz", "train.tgt.gz"), ("valid.src.gz", "valid.tgt.gz"),
                      ("test.src.gz", "test.tgt.gz"))
    gz = gz.rename(user_files / "gz.toml")
    plain = files_recipe(user_files)
    a = prepare(config.load(plain), tmp_path / "plain", log=Log())
    b = prepare(config.load(gz), tmp_path / "gz", log=Log())
    assert b.files["train"][0].name == "train.src.gz"
    assert a.tokenizers.checksums() == b.tokenizers.checksums()
    for name in ("train", "valid", "t1"):
        assert (rows(a.splits[name].src), rows(a.splits[name].tgt), a.splits[name].refs) == \
               (rows(b.splits[name].src), rows(b.splits[name].tgt), b.splits[name].refs)


def test_separate_tokenizers_for_user_files(user_files, tmp_path):
    p = prepare(config.load(user_files / "files.toml", ["tokenizer.joint=false"]), tmp_path / "exp", log=Log())
    assert (tmp_path / "exp" / "spm.src.model").is_file() and (tmp_path / "exp" / "spm.tgt.model").is_file()
    assert not (tmp_path / "exp" / "spm.model").exists()
    assert not p.tokenizers.joint
    assert Tokenizers.load(tmp_path / "exp").checksums() == p.tokenizers.checksums()


def test_edited_training_file_retrains(user_files, tmp_path):
    recipe = user_files / "files.toml"
    prepare(config.load(recipe), tmp_path / "exp", log=Log())
    lines = corpus.read_lines(user_files / "train.tgt")
    lines[0] = "aa bb cc"
    write_lines(user_files / "train.tgt", lines)
    log = Log()
    p = prepare(config.load(recipe), tmp_path / "exp", log=log)
    assert log.has("training SentencePiece") and log.has("encoded train")
    assert p.tokenizers.tgt.decode([rows(p.splits["train"].tgt)[0]]) == ["aa bb cc"]


def cp_p(src: Path, dest: Path) -> None:
    subprocess.run(["cp", "-p", str(src), str(dest)], check=True)  # overwrites dest in place (same inode)


def rsync_a(src: Path, dest: Path) -> None:
    """What `rsync -a` does: a temporary file beside dest with src's times, renamed over dest."""
    tmp = dest.with_name(f".{dest.name}.rsync")
    shutil.copy2(src, tmp)
    os.replace(tmp, dest)


@pytest.mark.parametrize("copy", [cp_p, rsync_a], ids=["cp -p", "rsync -a"])
def test_a_same_size_copy_with_the_old_mtime_is_not_the_old_data(user_files, tmp_path, copy):
    """`cp -p` and `rsync -a` keep size and modification time: a corpus replaced by a same-size
    file with other content, copied that way, must be encoded anew, not read from the cache."""
    recipe = user_files / "files.toml"
    prepare(config.load(recipe), tmp_path / "exp", log=Log())
    old = (user_files / "valid.src").read_bytes()
    new = old.replace(b"ab", b"ba")  # same size, other text
    assert len(new) == len(old) and new != old
    staged = tmp_path / "staged.src"
    staged.write_bytes(new)
    st = (user_files / "valid.src").stat()
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns))  # the copy carries the old file's times
    copy(staged, user_files / "valid.src")
    st2 = (user_files / "valid.src").stat()
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)  # what the old check compared
    log = Log()
    p = prepare(config.load(recipe), tmp_path / "exp", log=log)
    assert log.has("encoded valid")
    assert rows(p.splits["valid"].src) == p.tokenizers.src.encode(corpus.read_lines(user_files / "valid.src"))


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_mismatched_line_counts_name_both_files(user_files, tmp_path, split):
    lines = corpus.read_lines(user_files / f"{split}.tgt")
    write_lines(user_files / f"{split}.tgt", lines[:-1])
    with pytest.raises(Seq2SeqError) as e:
        prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=Log())
    msg = str(e.value)
    assert str(user_files / f"{split}.src") in msg and str(user_files / f"{split}.tgt") in msg
    assert f"{len(lines)} lines" in msg and f"has {len(lines) - 1}" in msg


@pytest.mark.parametrize("name", ["train.src", "valid.tgt"])
def test_invalid_utf8_names_file_and_line(user_files, tmp_path, name):
    data = (user_files / name).read_bytes().split(b"\n")
    data[6] = b"ab \xff cd"
    (user_files / name).write_bytes(b"\n".join(data))
    with pytest.raises(Seq2SeqError) as e:
        prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=Log())
    assert str(e.value).startswith(f"{user_files / name}:7: invalid UTF-8")


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split_is_named_at_prepare(user_files, tmp_path, split):
    """An empty split used to pass `prepare` and crash training at the first validation."""
    for side in ("src", "tgt"):
        (user_files / f"{split}.{side}").write_bytes(b"")
    with pytest.raises(Seq2SeqError) as e:
        prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=Log())
    assert str(e.value) == f"{user_files / f'{split}.src'} and {user_files / f'{split}.tgt'} are empty (no lines)"


def test_training_split_with_no_usable_pair_is_an_error(user_files, tmp_path):
    lines = corpus.read_lines(user_files / "train.src")
    write_lines(user_files / "train.tgt", ["  "] * len(lines))  # every pair has an empty side
    with pytest.raises(Seq2SeqError, match=re.escape(str(user_files / "train.src")) + ".*no training pair"):
        prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=Log())


def test_invalid_utf8_deep_in_a_large_training_file_names_the_line_and_caches_nothing(user_files, tmp_path):
    """Line 50,001 of a 60,000-line file: past the first chunks of the stream, still one line
    naming file and line, and no array of the split is left behind."""
    lines = [f"ab cd {i % 97}" for i in range(60_000)]
    write_lines(user_files / "train.tgt", lines)
    data = (user_files / "train.src")
    write_lines(data, lines)
    raw = data.read_bytes().split(b"\n")
    raw[50_000] = b"ab \xff cd"
    data.write_bytes(b"\n".join(raw))
    expdir = tmp_path / "exp"
    with pytest.raises(Seq2SeqError) as e:
        prepare(config.load(user_files / "files.toml"), expdir, log=Log())
    assert str(e.value) == f"{data}:50001: invalid UTF-8 (byte 0xff at column 4)"
    assert not (expdir / "cache").exists() or not any(f.name.startswith("train") for f in (expdir / "cache").iterdir())


def test_missing_user_file_is_named(user_files, tmp_path):
    (user_files / "valid.src").unlink()
    with pytest.raises(Seq2SeqError, match=re.escape(str(user_files / "valid.src"))):
        prepare(config.load(user_files / "files.toml"), tmp_path / "exp", log=Log())


# ---------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_prepare(multi30k_dir, tmp_path):
    out = tmp_path / "exp"
    r = run_cli("prepare", str(RECIPE), "--data-dir", str(multi30k_dir), "--out", str(out),
                "--set", "tokenizer.type=bpe", "--set", "tokenizer.vocab_size=1000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "valid: 1014 pairs" in r.stdout and "test_2016_flickr: 1000 pairs" in r.stdout
    assert re.search(r"^train: \d+ pairs$", r.stdout, re.M)
    assert "vocab: source 1000, target 1000 (joint)" in r.stdout
    assert (out / "spm.model").is_file() and (out / "cache" / "train.json").is_file()
    assert not (tmp_path / "data").exists()  # nothing downloaded into the working directory


@pytest.mark.slow
def test_cli_bad_override_is_one_error_line(multi30k_dir, tmp_path):
    out = tmp_path / "exp"
    r = run_cli("prepare", str(RECIPE), "--data-dir", str(multi30k_dir), "--out", str(out),
                "--set", "model.encoder.layers=0", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "model.encoder.layers must be >= 1, got 0" in lines[0]
    assert not out.exists()  # the config is checked before anything is written


def test_sample_lines_keeps_everything_in_order_up_to_k_else_samples_by_seed(tmp_path: Path):
    a = write_bytes(tmp_path / "a", "".join(f"a{i}\n" if i % 5 else "  \n" for i in range(1000)).encode())
    b = write_bytes(tmp_path / "b.gz", "".join(f"b{i}\n" for i in range(1000)).encode())
    every = [f"a{i}" for i in range(1000) if i % 5] + [f"b{i}" for i in range(1000)]
    assert sample_lines([a, b], 1800, seed=1) == every  # 1,800 non-empty lines: all, in order
    one, same, other = (sample_lines([a, b], 500, seed) for seed in (1, 1, 2))
    assert one == same != other
    assert len(one) == 500 and len(set(one)) == 500 and set(one) <= set(every)
    assert 0.3 < sum(x.startswith("a") for x in one) / 500 < 0.6  # uniform over both files (800 vs 1000)
