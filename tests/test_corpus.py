"""Tests for seq2seq.corpus: reading and checking (parallel) text, whole or streamed."""

import gzip
from pathlib import Path

import pytest

from conftest import write_bytes
from seq2seq import corpus
from seq2seq.corpus import read_lines, read_parallel
from seq2seq.errors import Seq2SeqError


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
