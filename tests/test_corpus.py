"""Tests for seq2seq.corpus: reading/verifying text and finding/downloading Multi30K.

Downloads go to a local http.server on 127.0.0.1 only; nothing here touches the internet.
"""

import gzip
import http.server
import os
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from seq2seq import corpus
from seq2seq.corpus import (
    multi30k_path,
    read_lines,
    read_parallel,
    resolve_data_dir,
)
from seq2seq.errors import Seq2SeqError

EXPECTED_LINES = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}


# ---------------------------------------------------------------------------- helpers


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, gzip-compressed when the name ends in .gz."""
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@dataclass
class Server:
    url: str
    root: Path  # files under here are served at url/<name>
    requests: list[str]  # request paths, in order


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A local HTTP file server that records every request it gets.

    It serves from its own temp directory so a test's `tmp_path` holds only what it downloads.
    """
    # A proxy configured in the environment must not intercept requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    root = tmp_path_factory.mktemp("served")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{httpd.server_port}", root, requests)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def tiny_val(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pretend the val split has 3 lines so synthetic files pass the line-count check."""
    monkeypatch.setitem(corpus.MULTI30K_SPLITS, "val", 3)
    return 3


# ---------------------------------------------------------------------------- real Multi30K


@pytest.mark.parametrize("split", list(EXPECTED_LINES))
def test_multi30k_de_en_is_parallel(multi30k_dir: Path, split: str):
    src_path = multi30k_path(multi30k_dir, split, "de", download=False)
    tgt_path = multi30k_path(multi30k_dir, split, "en", download=False)
    src, tgt = read_parallel(src_path, tgt_path)
    assert len(src) == len(tgt) == EXPECTED_LINES[split]
    assert all(line.strip() for line in src)
    assert all(line.strip() for line in tgt)


@pytest.mark.parametrize("lang", ["en", "de", "fr", "cs"])
@pytest.mark.parametrize("split", list(EXPECTED_LINES))
def test_multi30k_line_counts_match_table(multi30k_dir: Path, split: str, lang: str):
    lines = read_lines(multi30k_path(multi30k_dir, split, lang, download=False))
    assert len(lines) == corpus.MULTI30K_SPLITS[split] == EXPECTED_LINES[split]


# ---------------------------------------------------------------------------- read_lines


@pytest.mark.parametrize("name", ["a.txt", "a.txt.gz"])
def test_separators_inside_a_sentence_do_not_split_it(tmp_path: Path, name: str):
    sentence = "a\u2028b\u2029c\x0bd\x0ce\x1cf\x1dg\x1eh\x85i"
    path = write_bytes(tmp_path / name, f"{sentence}\nsecond\n".encode())
    assert read_lines(path) == [sentence, "second"]


def test_one_trailing_carriage_return_is_stripped(tmp_path: Path):
    path = write_bytes(tmp_path / "crlf.txt", b"one\r\ntwo\r\r\nin\rside\n")
    assert read_lines(path) == ["one", "two\r", "in\rside"]


def test_last_line_without_newline_is_kept(tmp_path: Path):
    path = write_bytes(tmp_path / "a.txt", b"first\nlast")
    assert read_lines(path) == ["first", "last"]


@pytest.mark.parametrize(
    "data, expected",
    [(b"", []), (b"\n", [""]), (b"a\n\nb\n", ["a", "", "b"]), (b"  padded  \n", ["  padded  "])],
)
def test_line_boundaries(tmp_path: Path, data: bytes, expected: list[str]):
    assert read_lines(write_bytes(tmp_path / "a.txt", data)) == expected


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz"])
def test_invalid_utf8_names_file_and_line(tmp_path: Path, name: str):
    path = write_bytes(tmp_path / name, b"ok\nfine\nbad \xff here\nok\n")
    with pytest.raises(Seq2SeqError, match="invalid UTF-8") as info:
        read_lines(path)
    assert f"{path}:3:" in str(info.value)


def test_missing_file_is_named(tmp_path: Path):
    path = tmp_path / "nope.en"
    with pytest.raises(Seq2SeqError, match="no such file") as info:
        read_lines(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"plain text, not gzip\n", gzip.compress(b"one\ntwo\nthree\n" * 100)[:-20]],
    ids=["not-gzip", "truncated"],
)
def test_corrupt_gzip_is_named(tmp_path: Path, data: bytes):
    path = tmp_path / "corrupt.en.gz"
    path.write_bytes(data)
    with pytest.raises(Seq2SeqError, match="not a valid gzip file") as info:
        read_lines(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- read_parallel


# ---------------------------------------------------------------------------- streamed lines


def stream(path: Path, max_lines: int, errors: str = "strict") -> list[list[str]]:
    with corpus.open_binary(path) as f:
        return list(corpus.read_line_chunks(f, max_lines, str(path), errors, hint="; HINT"))


@pytest.mark.parametrize("name", ["a.txt", "a.txt.gz"])
def test_streamed_lines_are_the_lines_of_the_whole_file(tmp_path: Path, name: str):
    """Chunks of at most max_lines that join to exactly what read_lines makes of the file, with
    its newline, \\r and separator rules, across read boundaries (the file is several reads long)."""
    rows = [f"line {i} \u2028 x\x0by\r" if i % 7 == 0 else f"line {i} " + "w" * (i % 50) for i in range(6000)]
    path = write_bytes(tmp_path / name, ("\n".join(rows) + "\r").encode())  # last line: no newline
    chunks = stream(path, 1000)
    assert all(1 <= len(c) <= 1000 for c in chunks)
    assert [line for c in chunks for line in c] == read_lines(path)
    assert len(read_lines(path)) == 6000 and read_lines(path)[-1] == rows[-1]


def test_streamed_invalid_utf8_names_the_line_past_a_read_boundary(tmp_path: Path):
    lines = [b"a b c d e f g h"] * 20000  # 320 kB: the bad line is read several reads in
    lines[15321] = b"a \xff b"
    path = write_bytes(tmp_path / "in.txt", b"\n".join(lines) + b"\n")
    with pytest.raises(Seq2SeqError) as info:
        stream(path, 100)
    assert str(info.value) == f"{path}:15322: invalid UTF-8 (byte 0xff at column 3); HINT"
    replaced = [line for c in stream(path, 100, errors="replace") for line in c]
    assert len(replaced) == 20000 and replaced[15321] == "a \ufffd b"


def test_parallel_chunks_are_aligned_and_checked_like_read_parallel(tmp_path: Path):
    src = [f"s{i}" for i in range(25)]
    tgt = [f"t{i}" for i in range(25)]
    a = write_bytes(tmp_path / "a.gz", ("\n".join(src) + "\n").encode())
    b = write_bytes(tmp_path / "b", ("\n".join(tgt) + "\n").encode())
    chunks = list(corpus.read_parallel_chunks(a, b, lines=10))
    assert [len(s) for s, _ in chunks] == [10, 10, 5]
    assert [x for s, _ in chunks for x in s] == src and [x for _, t in chunks for x in t] == tgt
    write_bytes(tmp_path / "b", ("\n".join(tgt[:-3]) + "\n").encode())
    with pytest.raises(Seq2SeqError, match=f"line counts differ: {a} has 25 lines, {tmp_path / 'b'} has 22"):
        list(corpus.read_parallel_chunks(a, b, lines=10))
    write_bytes(tmp_path / "b", b"")
    write_bytes(tmp_path / "a.gz", b"")
    with pytest.raises(Seq2SeqError, match="are empty"):
        list(corpus.read_parallel_chunks(a, b, lines=10))


def test_sample_lines_keeps_everything_in_order_up_to_k_else_samples_by_seed(tmp_path: Path):
    a = write_bytes(tmp_path / "a", "".join(f"a{i}\n" if i % 5 else "  \n" for i in range(1000)).encode())
    b = write_bytes(tmp_path / "b.gz", "".join(f"b{i}\n" for i in range(1000)).encode())
    every = [f"a{i}" for i in range(1000) if i % 5] + [f"b{i}" for i in range(1000)]
    assert corpus.sample_lines([a, b], 1800, seed=1) == every  # 1,800 non-empty lines: all, in order
    one, same, other = (corpus.sample_lines([a, b], 500, seed) for seed in (1, 1, 2))
    assert one == same != other
    assert len(one) == 500 and len(set(one)) == 500 and set(one) <= set(every)
    assert 0.3 < sum(x.startswith("a") for x in one) / 500 < 0.6  # uniform over both files (800 vs 1000)


def test_read_parallel_returns_both_sides(tmp_path: Path):
    src = write_bytes(tmp_path / "a.de", "eins\nzwei\n".encode())
    tgt = write_bytes(tmp_path / "a.en.gz", "one\ntwo\n".encode())
    assert read_parallel(str(src), tgt) == (["eins", "zwei"], ["one", "two"])


def test_read_parallel_mismatch_names_both_files_and_counts(tmp_path: Path):
    src = write_bytes(tmp_path / "a.de", b"1\n2\n3\n")
    tgt = write_bytes(tmp_path / "a.en", b"1\n2\n")
    with pytest.raises(Seq2SeqError, match="line counts differ") as info:
        read_parallel(src, tgt)
    message = str(info.value)
    assert f"{src} has 3 lines" in message
    assert f"{tgt} has 2" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------- resolve_data_dir


def test_resolve_data_dir_argument_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEQ2SEQ_DATA_DIR", str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_dir(str(tmp_path / "given")) == tmp_path / "given"


def test_resolve_data_dir_env_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEQ2SEQ_DATA_DIR", str(tmp_path / "from_env"))
    assert resolve_data_dir(None) == tmp_path / "from_env"


@pytest.mark.parametrize("env_value", [None, ""])
def test_resolve_data_dir_default_is_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env_value: str | None
):
    if env_value is None:
        monkeypatch.delenv("SEQ2SEQ_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("SEQ2SEQ_DATA_DIR", env_value)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_data_dir(None)
    assert resolved == Path("data/multi30k")
    assert resolved.resolve() == tmp_path.resolve() / "data" / "multi30k"


# ---------------------------------------------------------------------------- multi30k_path


@pytest.mark.parametrize(
    "split, lang, valid",
    [
        ("dev", "en", "unknown Multi30K split 'dev'; valid splits: train, val, test_2016_flickr"),
        ("val", "es", "unknown Multi30K language 'es'; valid languages: en, de, fr, cs"),
    ],
)
def test_unknown_split_or_lang_lists_valid_ones(tmp_path: Path, split: str, lang: str, valid: str):
    with pytest.raises(Seq2SeqError) as info:
        multi30k_path(tmp_path, split, lang)
    assert str(info.value) == valid
    assert not any(tmp_path.iterdir())


def test_existing_file_makes_no_request(tmp_path: Path, server: Server):
    existing = write_bytes(tmp_path / "train.en.gz", b"already here\n")
    write_bytes(server.root / "train.en.gz", b"from the server\n")
    assert multi30k_path(tmp_path, "train", "en", base_url=server.url) == existing
    assert server.requests == []
    assert read_lines(existing) == ["already here"]


def test_missing_file_with_download_disabled(tmp_path: Path, server: Server):
    with pytest.raises(Seq2SeqError, match="downloading is disabled") as info:
        multi30k_path(tmp_path, "val", "en", download=False, base_url=server.url)
    assert str(tmp_path / "val.en.gz") in str(info.value)
    assert "SEQ2SEQ_DATA_DIR" in str(info.value)
    assert server.requests == []


def test_download_real_file(tmp_path: Path, server: Server, multi30k_dir: Path):
    shutil.copy(multi30k_dir / "val.de.gz", server.root / "val.de.gz")
    data_dir = tmp_path / "nested" / "multi30k"  # created on demand
    path = multi30k_path(data_dir, "val", "de", base_url=server.url + "/")
    assert path == data_dir / "val.de.gz"
    assert path.read_bytes() == (multi30k_dir / "val.de.gz").read_bytes()
    assert len(read_lines(path)) == EXPECTED_LINES["val"]
    assert server.requests == ["/val.de.gz"]
    assert [p.name for p in data_dir.iterdir()] == ["val.de.gz"]  # no temp file left


def test_download_synthetic_file(tmp_path: Path, server: Server, tiny_val: int):
    write_bytes(server.root / "val.fr.gz", "un\ndeux\u2028bis\ntrois\n".encode())
    path = multi30k_path(tmp_path, "val", "fr", base_url=server.url)
    assert read_lines(path) == ["un", "deux\u2028bis", "trois"]
    assert [p.name for p in tmp_path.iterdir()] == ["val.fr.gz"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_env_var_sets_base_url(tmp_path: Path, server: Server, tiny_val: int, monkeypatch):
    write_bytes(server.root / "val.cs.gz", b"a\nb\nc\n")
    monkeypatch.setenv("SEQ2SEQ_MULTI30K_URL", server.url)
    multi30k_path(tmp_path, "val", "cs")
    assert server.requests == ["/val.cs.gz"]


def test_base_url_argument_beats_env(tmp_path: Path, server: Server, tiny_val: int, monkeypatch):
    write_bytes(server.root / "val.cs.gz", b"a\nb\nc\n")
    monkeypatch.setenv("SEQ2SEQ_MULTI30K_URL", f"http://127.0.0.1:{closed_port()}")
    multi30k_path(tmp_path, "val", "cs", base_url=server.url)
    assert server.requests == ["/val.cs.gz"]


@pytest.mark.parametrize(
    "served, match",
    [
        (gzip.compress(b"only\ntwo\n"), "has 2 lines, expected 3"),
        (b"<html>not gzip</html>\n", "not a valid gzip file"),
        (gzip.compress(b"a\n\xff\nc\n"), r"val\.en\.gz:2: invalid UTF-8"),
    ],
    ids=["wrong-line-count", "not-gzip", "bad-utf8"],
)
def test_bad_download_is_rejected_and_removed(
    tmp_path: Path, server: Server, tiny_val: int, served: bytes, match: str
):
    (server.root / "val.en.gz").write_bytes(served)
    data_dir = tmp_path / "data"
    with pytest.raises(Seq2SeqError, match=match) as info:
        multi30k_path(data_dir, "val", "en", base_url=server.url)
    assert f"{server.url}/val.en.gz" in str(info.value)
    assert list(data_dir.iterdir()) == []


def test_http_404_names_url(tmp_path: Path, server: Server):
    data_dir = tmp_path / "data"
    with pytest.raises(Seq2SeqError, match="HTTP 404") as info:
        multi30k_path(data_dir, "test_2016_flickr", "de", base_url=server.url)
    message = str(info.value)
    assert f"{server.url}/test_2016_flickr.de.gz" in message
    assert "--data-dir" in message and "SEQ2SEQ_DATA_DIR" in message
    assert server.requests == ["/test_2016_flickr.de.gz"]
    assert list(data_dir.iterdir()) == []


def test_connection_refused_names_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(Seq2SeqError, match="cannot download") as info:
        multi30k_path(tmp_path, "val", "en", base_url=url)
    assert f"{url}/val.en.gz" in str(info.value)
    assert "--data-dir" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_data_dir_that_is_a_file(tmp_path: Path, server: Server):
    not_a_dir = write_bytes(tmp_path / "multi30k", b"")
    with pytest.raises(Seq2SeqError, match="cannot create data directory") as info:
        multi30k_path(not_a_dir, "val", "en", base_url=server.url)
    assert str(not_a_dir) in str(info.value)
    assert server.requests == []


def test_read_only_data_dir(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch):
    # Tests run as root here, where chmod does not stop writes: fake the permission check.
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == data_dir else real_access(p, mode))
    with pytest.raises(Seq2SeqError, match="not writable") as info:
        multi30k_path(data_dir, "val", "en", base_url=server.url)
    assert str(data_dir) in str(info.value)
    assert server.requests == []


def closed_port() -> int:
    """A local port with (almost certainly) nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
