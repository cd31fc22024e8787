"""Multi30K task 1 (raw, gzip): find its files in a local directory, or download them from the
multi30k/dataset repository on GitHub, atomically and checked against the known line counts.

Standard library (+ tqdm) only. Every failure is a one-line `Seq2SeqError` that says how to work
offline (a local copy through --data-dir or $SEQ2SEQ_DATA_DIR).
"""

from __future__ import annotations

import gzip
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from seq2seq.corpus import CHUNK_BYTES, GZIP_ERRORS, split_lines
from seq2seq.errors import Seq2SeqError

LANGS = ("en", "de", "fr", "cs")
SPLITS = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}  # expected line counts
URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
DEFAULT_DATA_DIR = Path("data/multi30k")

_DOWNLOAD_TIMEOUT_S = 60
_LOCAL_COPY_HINT = (
    "to work offline, pass --data-dir or set SEQ2SEQ_DATA_DIR to a directory holding "
    "a local copy of the Multi30K files"
)


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """Pick the Multi30K directory: the argument, else $SEQ2SEQ_DATA_DIR, else data/multi30k.

    The default is relative to the current directory, matching where the README tells
    users to run commands from; `~` is expanded because config files do not go through a shell.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env_dir = os.environ.get("SEQ2SEQ_DATA_DIR")
    if env_dir:
        return Path(env_dir).expanduser()
    return DEFAULT_DATA_DIR


def split_file(
    data_dir: Path,
    split: str,
    lang: str,
    download: bool = True,
    base_url: str | None = None,
) -> Path:
    """Return the local path of one Multi30K file, downloading it first if it is missing.

    An existing file is returned without touching the network, so offline machines work
    as soon as the files are in place. `base_url` beats $SEQ2SEQ_MULTI30K_URL beats the
    official GitHub location.
    """
    _check_multi30k_name(split, lang)
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.{lang}.gz"
    if path.exists():
        return path
    if not download:
        raise Seq2SeqError(f"{path}: no such file and downloading is disabled; {_LOCAL_COPY_HINT}")
    base_url = base_url or os.environ.get("SEQ2SEQ_MULTI30K_URL") or URL
    _make_writable_dir(data_dir)
    _download(f"{base_url.rstrip('/')}/{path.name}", path, SPLITS[split])
    return path


def _check_multi30k_name(split: str, lang: str) -> None:
    """Reject unknown split/language names before any file or URL is built from them."""
    if split not in SPLITS:
        raise Seq2SeqError(
            f"unknown Multi30K split {split!r}; valid splits: {', '.join(SPLITS)}"
        )
    if lang not in LANGS:
        raise Seq2SeqError(
            f"unknown Multi30K language {lang!r}; valid languages: {', '.join(LANGS)}"
        )


def _make_writable_dir(data_dir: Path) -> None:
    """Create `data_dir` and check it is writable, so failures name the directory, not a temp file."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Seq2SeqError(
            f"cannot create data directory {data_dir} ({exc.strerror or exc}); {_LOCAL_COPY_HINT}"
        ) from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise Seq2SeqError(f"data directory {data_dir} is not writable; {_LOCAL_COPY_HINT}")


def _download(url: str, dest: Path, expected_lines: int) -> None:
    """Download `url` to `dest` atomically: other processes see the whole verified file or none.

    The temp file lives next to `dest` so `os.replace` is a rename on one filesystem;
    it is removed on every failure path (including Ctrl-C), so no partial file stays behind.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise Seq2SeqError(
            f"cannot write to data directory {dest.parent} ({exc.strerror or exc}); "
            f"{_LOCAL_COPY_HINT}"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, desc=dest.name)
        _verify_download(tmp, url, expected_lines)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are meant to be shared
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(url: str, out: BinaryIO, desc: str) -> None:
    """Stream `url` into `out` under a tqdm byte counter; network failures become Seq2SeqError."""
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise Seq2SeqError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; {_LOCAL_COPY_HINT}"
        ) from None
    except urllib.error.URLError as exc:
        raise Seq2SeqError(f"cannot download {url}: {exc.reason}; {_LOCAL_COPY_HINT}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, short reads
        raise Seq2SeqError(
            f"cannot download {url}: {str(exc) or type(exc).__name__}; {_LOCAL_COPY_HINT}"
        ) from None


def _verify_download(path: Path, url: str, expected_lines: int) -> None:
    """Check a downloaded file is gzip'd UTF-8 with the expected line count.

    Catches truncated transfers and HTML error pages served with status 200 before they
    are renamed into place and mistaken for data.
    """
    try:
        data = gzip.decompress(path.read_bytes())
    except GZIP_ERRORS as exc:
        raise Seq2SeqError(
            f"download from {url} is not a valid gzip file ({exc}); {_LOCAL_COPY_HINT}"
        ) from None
    n_lines = len(split_lines(data, url))
    if n_lines != expected_lines:
        raise Seq2SeqError(
            f"download from {url} has {n_lines} lines, expected {expected_lines}; "
            f"{_LOCAL_COPY_HINT}"
        )
