"""Tests for seq2seq.dataset: a cached split read back sentence by sentence (`Column[i]`, the
block index and pread that training reads) against the ids it was written from, for every id
and length dtype, at random indices and at every kind of block boundary."""

import random

import pytest
import torch

from seq2seq.dataset import BLOCK, CachedSplit, Column, EncodedSplit, SplitWriter, load_split


def sentences(n: int, vocab: int, longest: int, seed: int) -> list[list[int]]:
    """n random sentences of ids < vocab, lengths 0..longest, with one of exactly `longest`."""
    rng = random.Random(seed)
    out = [[rng.randrange(vocab) for _ in range(rng.randint(0, min(longest, 40)))] for _ in range(n)]
    out[n // 3] = [rng.randrange(vocab) for _ in range(longest)]
    out[n // 3][0] = vocab - 1  # the largest id is written and read back too
    return out


def write(directory, src, tgt, vocab: int, chunk: int = 97) -> CachedSplit:
    writer = SplitWriter(directory, "train", (vocab, vocab))
    for a in range(0, len(src), chunk):  # several chunks, as prepare writes them
        writer.add(src[a:a + chunk], tgt[a:a + chunk])
    writer.close("key")
    split = load_split(directory, "train", "key")
    assert split is not None
    return split


def boundaries(n: int) -> list[int]:
    """Indices at and around every block boundary, the first and the last."""
    near = {k * BLOCK + d for k in range(n // BLOCK + 1) for d in (-1, 0, 1)}
    return sorted(i for i in near | {0, n - 1} if 0 <= i < n)


# (vocabulary, longest sentence) -> (ids dtype, lengths dtype)
DTYPES = {
    (1000, 200): ("uint16", "uint8"),
    (1 << 16, 255): ("uint16", "uint8"),        # the largest vocabulary uint16 holds, the longest uint8 does
    (1000, 256): ("uint16", "uint16"),
    (70_000, 300): ("int32", "uint16"),
    (70_000, 1 << 16): ("int32", "int32"),
}


@pytest.mark.parametrize(("vocab", "longest"), list(DTYPES), ids=[f"{a}-{b}" for a, b in DTYPES.values()])
def test_every_sentence_reads_back_as_written(tmp_path, vocab, longest):
    n = 5 * BLOCK + 17  # full blocks and a partial last one
    src, tgt = sentences(n, vocab, longest, seed=1), sentences(n, vocab, 30, seed=2)
    split = write(tmp_path, src, tgt, vocab)
    meta = (tmp_path / "train.json").read_text()
    ids_type, len_type = DTYPES[(vocab, longest)]
    assert f'"ids": "{ids_type}"' in meta and f'"lengths": "{len_type}"' in meta
    assert split.src.lengths.dtype == getattr(torch, len_type)
    rng = random.Random(3)
    for i in boundaries(n) + [rng.randrange(n) for _ in range(200)]:
        assert split.src[i] == src[i], i
        assert split.tgt[i] == tgt[i], i
    assert split.src[-1] == src[-1] and split.src[-n] == src[0]
    assert split.src[BLOCK - 2:BLOCK + 2] == src[BLOCK - 2:BLOCK + 2]
    with pytest.raises(IndexError):
        split.src[n]
    assert [list(s) for s in split.tgt] == tgt  # iteration reads sentence by sentence too


def test_sizes_are_those_of_the_same_split_as_lists(tmp_path):
    src, tgt = sentences(300, 500, 60, seed=4), sentences(300, 500, 50, seed=5)
    cached = write(tmp_path, src, tgt, 500)
    assert torch.equal(cached.sizes().long(), EncodedSplit("train", src, tgt).sizes())
    assert len(cached) == 300 and cached.src.tokens == sum(map(len, src))


def test_a_truncated_ids_file_is_never_read_as_a_split(tmp_path):
    src, tgt = sentences(100, 500, 20, seed=6), sentences(100, 500, 20, seed=7)
    write(tmp_path, src, tgt, 500)
    path = tmp_path / "train.src.ids"
    path.write_bytes(path.read_bytes()[:-2])
    assert load_split(tmp_path, "train", "key") is None
    assert load_split(tmp_path, "train", "another key") is None


def test_column_has_no_whole_file_comparison(tmp_path):
    """A Column is compared by identity: equality with lists would read whole id files."""
    src = sentences(10, 50, 5, seed=8)
    split = write(tmp_path, src, src, 50)
    assert isinstance(split.src, Column)
    assert split.src != src
