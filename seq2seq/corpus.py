"""Read and verify parallel text; find or download Multi30K.

Standard library (+ tqdm) only, so data can be checked without importing torch.
Every user-facing failure is a one-line `Seq2SeqError` naming the file (and line) at fault.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import random
import select
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from tqdm import tqdm

from seq2seq.errors import Seq2SeqError

MULTI30K_LANGS = ("en", "de", "fr", "cs")
MULTI30K_SPLITS = {"train": 29000, "val": 1014, "test_2016_flickr": 1000}  # expected line counts
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
DEFAULT_DATA_DIR = Path("data/multi30k")

_DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 16
# What a damaged gzip stream raises: bad header/CRC, truncation, corrupt deflate data.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)
_LOCAL_COPY_HINT = (
    "to work offline, pass --data-dir or set SEQ2SEQ_DATA_DIR to a directory holding "
    "a local copy of the Multi30K files"
)


# ---------------------------------------------------------------------------- reading text


def read_lines(path: str | Path) -> list[str]:
    """Return the lines of a UTF-8 text file (gzip-compressed if it ends in `.gz`).

    Splits on "\\n" only: `str.splitlines` would also break at \\u2028, \\x0b, \\x1c, ...,
    which occur inside real sentences and would silently misalign parallel files.
    One trailing "\\r" per line is dropped (files written on Windows); nothing else is touched.
    """
    path = Path(path)
    return split_lines(_read_bytes(path), str(path))


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> tuple[list[str], list[str]]:
    """Read a source/target file pair, refusing empty pairs and pairs whose line counts differ.

    A count mismatch means the sentence pairing is wrong everywhere after the first
    missing line, so it must stop training rather than be truncated away.
    """
    src: list[str] = []
    tgt: list[str] = []
    for src_chunk, tgt_chunk in read_parallel_chunks(src_path, tgt_path):
        src += src_chunk
        tgt += tgt_chunk
    return src, tgt


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, decompressing `.gz`, turning I/O failures into one-line errors."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise Seq2SeqError(f"{path}: no such file") from None
    except _GZIP_ERRORS as exc:  # before OSError: BadGzipFile is an OSError
        raise Seq2SeqError(f"{path}: not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise Seq2SeqError(f"{path}: cannot read ({exc.strerror or exc})") from None


def split_lines(data: bytes, name: str, first_line: int = 1, errors: str = "strict") -> list[str]:
    """Decode UTF-8 and split on "\\n"; `name` is what error messages call the source, and
    `first_line` the number of data's first line in it. errors="replace" replaces invalid bytes
    instead of stopping at them."""
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line_no = data.count(b"\n", 0, exc.start) + first_line
        column = exc.start - line_start + 1
        raise Seq2SeqError(
            f"{name}:{line_no}: invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"
        ) from None
    lines = text.split("\n")
    if lines[-1] == "":  # the final newline ends the last line; it does not start a new one
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file for reading bytes, decompressing `.gz`; failures are one-line errors."""
    try:
        return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise Seq2SeqError(f"{path}: no such file") from None
    except OSError as exc:
        raise Seq2SeqError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_line_chunks(f: BinaryIO, max_lines: int, name: str, errors: str = "strict",
                     hint: str = "") -> Iterator[list[str]]:
    """Yield the lines of a byte stream in lists of up to `max_lines`, or whatever has arrived
    as soon as the input pauses, so that a pipe fed line by line gets each answer at once.
    The lines are those `split_lines` makes of the whole stream; `hint` ends error messages."""
    if max_lines < 1:
        raise Seq2SeqError(f"lines per chunk must be >= 1, got {max_lines}")
    pending, lines, number = bytearray(), [], 1  # number: the line that pending starts with
    pipe = None if isinstance(f, gzip.GzipFile) else f.fileno()  # a .gz file never pauses

    def split(raw: bytes) -> list[str]:
        try:
            return split_lines(raw, name, number, errors)
        except Seq2SeqError as exc:
            raise Seq2SeqError(f"{exc}{hint}") from None

    while True:
        try:
            data = f.read1(_CHUNK_BYTES)
        except _GZIP_ERRORS as exc:
            raise Seq2SeqError(f"{name}: not a valid gzip file ({exc})") from None
        pending += data
        if b"\n" in data:  # split only when a line ended: linear even for one enormous line
            end = pending.rfind(b"\n") + 1
            complete = split(bytes(pending[:end]))
            lines += complete
            number += len(complete)
            del pending[:end]
        if not data and pending:  # a last line without a newline
            lines += split(bytes(pending))
            pending.clear()
        while len(lines) >= max_lines:
            yield lines[:max_lines]
            lines = lines[max_lines:]
        if lines and (not data or (pipe is not None and not select.select([pipe], [], [], 0)[0])):
            yield lines
            lines = []
        if not data:
            return


def read_parallel_chunks(src_path: str | Path, tgt_path: str | Path,
                         lines: int = 10_000) -> Iterator[tuple[list[str], list[str]]]:
    """Stream a source/target file pair as aligned chunks of `lines` pairs, never the whole file
    in memory, with `read_lines`' line rules. A count mismatch (found at the end of the shorter
    file, reporting both counts) and an empty pair are errors: nothing to train on, validate or
    score, said now rather than steps later."""
    with open_binary(src_path) as fs, open_binary(tgt_path) as ft:
        src_chunks = read_line_chunks(fs, lines, str(src_path))
        tgt_chunks = read_line_chunks(ft, lines, str(tgt_path))
        src_buf: list[str] = []
        tgt_buf: list[str] = []
        counts = [0, 0]
        while True:
            if len(src_buf) < lines:
                src_buf += next(src_chunks, [])
            if len(tgt_buf) < lines:
                tgt_buf += next(tgt_chunks, [])
            n = min(len(src_buf), len(tgt_buf), lines)
            if n == 0:
                break
            counts[0] += n
            counts[1] += n
            yield src_buf[:n], tgt_buf[:n]
            del src_buf[:n], tgt_buf[:n]
        counts[0] += len(src_buf) + sum(map(len, src_chunks))
        counts[1] += len(tgt_buf) + sum(map(len, tgt_chunks))
    if counts[0] != counts[1]:
        raise Seq2SeqError(f"line counts differ: {src_path} has {counts[0]} lines, {tgt_path} has {counts[1]}")
    if counts[0] == 0:
        raise Seq2SeqError(f"{src_path} and {tgt_path} are empty (no lines)")


def sample_lines(paths: list[Path], k: int, seed: int) -> list[str]:
    """Non-empty lines of the files, in order while there are at most k of them, else a
    uniform sample of k (reservoir sampling, seeded): never more than k lines in memory."""
    rng, sample, seen = random.Random(seed), [], 0
    for path in paths:
        with open_binary(path) as f:
            for chunk in read_line_chunks(f, 10_000, str(path)):
                for line in chunk:
                    if not line.strip():
                        continue
                    seen += 1
                    if len(sample) < k:
                        sample.append(line)
                    elif (j := rng.randrange(seen)) < k:
                        sample[j] = line
    return sample


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except FileNotFoundError:
        raise Seq2SeqError(f"{path}: no such file") from None
    except OSError as exc:
        raise Seq2SeqError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


# ---------------------------------------------------------------------------- Multi30K


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


def multi30k_path(
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
    base_url = base_url or os.environ.get("SEQ2SEQ_MULTI30K_URL") or MULTI30K_URL
    _make_writable_dir(data_dir)
    _download(f"{base_url.rstrip('/')}/{path.name}", path, MULTI30K_SPLITS[split])
    return path


def _check_multi30k_name(split: str, lang: str) -> None:
    """Reject unknown split/language names before any file or URL is built from them."""
    if split not in MULTI30K_SPLITS:
        raise Seq2SeqError(
            f"unknown Multi30K split {split!r}; valid splits: {', '.join(MULTI30K_SPLITS)}"
        )
    if lang not in MULTI30K_LANGS:
        raise Seq2SeqError(
            f"unknown Multi30K language {lang!r}; valid languages: {', '.join(MULTI30K_LANGS)}"
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
                while chunk := response.read(_CHUNK_BYTES):
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
    except _GZIP_ERRORS as exc:
        raise Seq2SeqError(
            f"download from {url} is not a valid gzip file ({exc}); {_LOCAL_COPY_HINT}"
        ) from None
    n_lines = len(split_lines(data, url))
    if n_lines != expected_lines:
        raise Seq2SeqError(
            f"download from {url} has {n_lines} lines, expected {expected_lines}; "
            f"{_LOCAL_COPY_HINT}"
        )
