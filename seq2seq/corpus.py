"""Read and check parallel text: UTF-8 lines of plain or gzip files, whole or streamed in
aligned chunks, with the line counts of both sides checked.

Standard library only, so data can be checked without importing torch. Every user-facing
failure is a one-line `Seq2SeqError` naming the file (and line) at fault.
"""

from __future__ import annotations

import gzip
import select
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from seq2seq.errors import Seq2SeqError

CHUNK_BYTES = 1 << 16
# What a damaged gzip stream raises: bad header/CRC, truncation, corrupt deflate data.
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


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
    except GZIP_ERRORS as exc:  # before OSError: BadGzipFile is an OSError
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
            data = f.read1(CHUNK_BYTES)
        except GZIP_ERRORS as exc:
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
