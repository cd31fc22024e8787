"""Tests for seq2seq.multi30k: finding and downloading Multi30K, and the real files' counts.

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

from conftest import write_bytes
from seq2seq import multi30k
from seq2seq.corpus import read_lines, read_parallel
from seq2seq.errors import Seq2SeqError
from seq2seq.multi30k import resolve_data_dir, split_file

EXPECTED_LINES = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}


# ---------------------------------------------------------------------------- helpers


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
    monkeypatch.setitem(multi30k.SPLITS, "val", 3)
    return 3


# ---------------------------------------------------------------------------- real Multi30K


@pytest.mark.parametrize("split", list(EXPECTED_LINES))
def test_multi30k_de_en_is_parallel(multi30k_dir: Path, split: str):
    src_path = split_file(multi30k_dir, split, "de", download=False)
    tgt_path = split_file(multi30k_dir, split, "en", download=False)
    src, tgt = read_parallel(src_path, tgt_path)
    assert len(src) == len(tgt) == EXPECTED_LINES[split]
    assert all(line.strip() for line in src)
    assert all(line.strip() for line in tgt)


@pytest.mark.parametrize("lang", ["en", "de", "fr", "cs"])
@pytest.mark.parametrize("split", list(EXPECTED_LINES))
def test_multi30k_line_counts_match_table(multi30k_dir: Path, split: str, lang: str):
    lines = read_lines(split_file(multi30k_dir, split, lang, download=False))
    assert len(lines) == multi30k.SPLITS[split] == EXPECTED_LINES[split]


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


# ---------------------------------------------------------------------------- split_file


@pytest.mark.parametrize(
    "split, lang, valid",
    [
        ("dev", "en", "unknown Multi30K split 'dev'; valid splits: train, val, test_2016_flickr"),
        ("val", "es", "unknown Multi30K language 'es'; valid languages: en, de, fr, cs"),
    ],
)
def test_unknown_split_or_lang_lists_valid_ones(tmp_path: Path, split: str, lang: str, valid: str):
    with pytest.raises(Seq2SeqError) as info:
        split_file(tmp_path, split, lang)
    assert str(info.value) == valid
    assert not any(tmp_path.iterdir())


def test_existing_file_makes_no_request(tmp_path: Path, server: Server):
    existing = write_bytes(tmp_path / "train.en.gz", b"already here\n")
    write_bytes(server.root / "train.en.gz", b"from the server\n")
    assert split_file(tmp_path, "train", "en", base_url=server.url) == existing
    assert server.requests == []
    assert read_lines(existing) == ["already here"]


def test_missing_file_with_download_disabled(tmp_path: Path, server: Server):
    with pytest.raises(Seq2SeqError, match="downloading is disabled") as info:
        split_file(tmp_path, "val", "en", download=False, base_url=server.url)
    assert str(tmp_path / "val.en.gz") in str(info.value)
    assert "SEQ2SEQ_DATA_DIR" in str(info.value)
    assert server.requests == []


def test_download_real_file(tmp_path: Path, server: Server, multi30k_dir: Path):
    shutil.copy(multi30k_dir / "val.de.gz", server.root / "val.de.gz")
    data_dir = tmp_path / "nested" / "multi30k"  # created on demand
    path = split_file(data_dir, "val", "de", base_url=server.url + "/")
    assert path == data_dir / "val.de.gz"
    assert path.read_bytes() == (multi30k_dir / "val.de.gz").read_bytes()
    assert len(read_lines(path)) == EXPECTED_LINES["val"]
    assert server.requests == ["/val.de.gz"]
    assert [p.name for p in data_dir.iterdir()] == ["val.de.gz"]  # no temp file left


def test_download_synthetic_file(tmp_path: Path, server: Server, tiny_val: int):
    write_bytes(server.root / "val.fr.gz", "un\ndeux\u2028bis\ntrois\n".encode())
    path = split_file(tmp_path, "val", "fr", base_url=server.url)
    assert read_lines(path) == ["un", "deux\u2028bis", "trois"]
    assert [p.name for p in tmp_path.iterdir()] == ["val.fr.gz"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_env_var_sets_base_url(tmp_path: Path, server: Server, tiny_val: int, monkeypatch):
    write_bytes(server.root / "val.cs.gz", b"a\nb\nc\n")
    monkeypatch.setenv("SEQ2SEQ_MULTI30K_URL", server.url)
    split_file(tmp_path, "val", "cs")
    assert server.requests == ["/val.cs.gz"]


def test_base_url_argument_beats_env(tmp_path: Path, server: Server, tiny_val: int, monkeypatch):
    write_bytes(server.root / "val.cs.gz", b"a\nb\nc\n")
    monkeypatch.setenv("SEQ2SEQ_MULTI30K_URL", f"http://127.0.0.1:{closed_port()}")
    split_file(tmp_path, "val", "cs", base_url=server.url)
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
        split_file(data_dir, "val", "en", base_url=server.url)
    assert f"{server.url}/val.en.gz" in str(info.value)
    assert list(data_dir.iterdir()) == []


def test_http_404_names_url(tmp_path: Path, server: Server):
    data_dir = tmp_path / "data"
    with pytest.raises(Seq2SeqError, match="HTTP 404") as info:
        split_file(data_dir, "test_2016_flickr", "de", base_url=server.url)
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
        split_file(tmp_path, "val", "en", base_url=url)
    assert f"{url}/val.en.gz" in str(info.value)
    assert "--data-dir" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_data_dir_that_is_a_file(tmp_path: Path, server: Server):
    not_a_dir = write_bytes(tmp_path / "multi30k", b"")
    with pytest.raises(Seq2SeqError, match="cannot create data directory") as info:
        split_file(not_a_dir, "val", "en", base_url=server.url)
    assert str(not_a_dir) in str(info.value)
    assert server.requests == []


def test_read_only_data_dir(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch):
    # Tests run as root here, where chmod does not stop writes: fake the permission check.
    data_dir = tmp_path / "ro"
    data_dir.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == data_dir else real_access(p, mode))
    with pytest.raises(Seq2SeqError, match="not writable") as info:
        split_file(data_dir, "val", "en", base_url=server.url)
    assert str(data_dir) in str(info.value)
    assert server.requests == []


def closed_port() -> int:
    """A local port with (almost certainly) nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
