"""The split types: what batching, training and validation read an encoded split from.

    Split         the protocol: name, src and tgt (sequences of piece-id lists), refs, sizes()
    EncodedSplit  a split as Python lists (small data, tests)
    CachedSplit   a split in prepare's cache on disk, its two sides `Column`s read by sentence
    SplitWriter   writes a cached split chunk by chunk; `load_split` opens one

On disk (fairseq's layout), a split NAME in a cache directory is five files:

    NAME.src.ids  NAME.tgt.ids   every sentence's piece ids, one after another
                                 (uint16 when the vocabulary fits, else int32)
    NAME.src.len  NAME.tgt.len   each sentence's length (uint8, uint16 or int32: the
                                 smallest that holds the longest sentence)
    NAME.json                    the key it was built from, counts and dtypes; written last

Training never loads the id files: a batch reads its sentences with `pread`, so start-up does
not grow with the corpus, nothing is copied into Python lists, and processes on one machine
(DDP ranks) share the page cache. Only the lengths are read (1 byte a sentence for sentences
under 256 pieces), with the start of every 64th sentence. The id files are read, not mapped
with `mmap`: a mapping's resident memory grows with every page a sentence touches (the kernel
maps ahead around each fault), while `pread` leaves that to the page cache.

A cache is used only if NAME.json names the same key and the files have exactly the sizes it
states, with lengths that add up to the ids; anything else is rebuilt, never trusted.
"""

from __future__ import annotations

import json
import os
import weakref
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from seq2seq.checkpoint import atomic_write_bytes
from seq2seq.errors import Seq2SeqError

ID_TYPES = {"uint16": ("H", torch.uint16), "int32": ("i", torch.int32)}
LEN_TYPES = {"uint8": ("B", torch.uint8), "uint16": ("H", torch.uint16), "int32": ("i", torch.int32)}
SIDES = ("src", "tgt")
BLOCK = 64  # sentences per entry of a column's start index


class Split(Protocol):
    """What batching and validation read from an encoded split: EncodedSplit (lists, for small
    data and tests) or CachedSplit (prepare's arrays on disk)."""

    name: str
    src: Sequence[list[int]]
    tgt: Sequence[list[int]]
    refs: list[str]  # the raw target lines of a scored split

    def __len__(self) -> int: ...

    def sizes(self) -> Tensor: ...


@dataclass
class EncodedSplit:
    """One split as lists of piece ids; `refs` are the raw target lines (never filtered)."""

    name: str
    src: list[list[int]]
    tgt: list[list[int]]
    refs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)

    def sizes(self) -> Tensor:
        """(n,) int64: max(len(src), len(tgt)) + 1 per pair, what a batch's budget counts."""
        return torch.tensor([max(len(s), len(t)) + 1 for s, t in zip(self.src, self.tgt)], dtype=torch.int64)


def id_type(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def len_type(longest: int) -> str:
    return "uint8" if longest < 1 << 8 else "uint16" if longest < 1 << 16 else "int32"


class Column(Sequence):
    """One side of a split, sentence i read from the ids file with pread when asked for (the
    page cache keeps what is hot, shared by every process). Iterating reads sentence by sentence
    too (Sequence's __iter__): nothing here reads a whole ids file into memory."""

    def __init__(self, path: Path, id_type: str, lengths: Tensor):
        self.path, self.lengths = path, lengths                         # lengths (n,)
        self.typecode, dtype = ID_TYPES[id_type]
        self.itemsize = dtype.itemsize
        # Where every BLOCK-th sentence starts (8 bytes per BLOCK sentences); a sentence's start
        # adds the lengths before it in its block. Summed a slice at a time: a widened copy of
        # all the lengths (8 bytes a sentence) would stay in the process's heap after it is
        # freed, and count against training's peak memory.
        whole = len(lengths) - len(lengths) % BLOCK
        sums = [part.sum(1, dtype=torch.int64) for part in lengths[:whole].view(-1, BLOCK).split(1 << 12)]
        sums.append(lengths[whole:].sum(dtype=torch.int64)[None])                # the last, partial block
        self.blocks = torch.cat([torch.zeros(1, dtype=torch.int64), *sums]).cumsum(0)  # (n / BLOCK + 1,)
        self.tokens = int(self.blocks[-1])
        self.fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices, and IndexError past the end
        first = i - i % BLOCK
        start = int(self.blocks[i // BLOCK]) + int(self.lengths[first:i].sum())
        n = int(self.lengths[i])
        data = os.pread(self.fd, n * self.itemsize, start * self.itemsize)
        if len(data) != n * self.itemsize:
            raise Seq2SeqError(f"{self.path}: shorter than its index says (changed while in use?)")
        return array(self.typecode, data).tolist()


@dataclass
class CachedSplit:
    """An encoded split in prepare's cache (the files above); `refs` are the raw target lines
    of a split that is scored (empty for train). Offers what `EncodedSplit` offers."""

    name: str
    src: Column
    tgt: Column
    refs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)

    def sizes(self) -> Tensor:
        """(n,) int32: max(len(src), len(tgt)) + 1 per pair, what a batch's budget counts."""
        return torch.maximum(self.src.lengths, self.tgt.lengths).to(torch.int32).add_(1)


class SplitWriter:
    """Append encoded pairs chunk by chunk; `close()` makes the split visible, all at once.

    The arrays go to temporary files beside their final names and are renamed into place
    only when complete; NAME.json comes last. A run killed half-way leaves the old split
    or no split, and a stale NAME.json never matches arrays of another size."""

    def __init__(self, directory: Path, name: str, vocab_sizes: tuple[int, int]):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.name = directory, name
        (directory / f"{name}.json").unlink(missing_ok=True)  # the old split is gone from here on
        self.id_types = [id_type(v) for v in vocab_sizes]
        self.tmp = {side: {kind: directory / f".{name}.{side}.{kind}.tmp{os.getpid()}" for kind in ("ids", "len")}
                    for side in SIDES}
        self.files = {side: {kind: open(path, "wb") for kind, path in paths.items()}
                      for side, paths in self.tmp.items()}
        self.lengths = {side: array("i") for side in SIDES}
        self.tokens = {side: 0 for side in SIDES}

    def add(self, src: list[list[int]], tgt: list[list[int]]) -> None:
        for side, seqs, typ in zip(SIDES, (src, tgt), self.id_types):
            ids = array(ID_TYPES[typ][0])
            for s in seqs:
                ids.extend(s)
            self.files[side]["ids"].write(ids.tobytes())
            self.lengths[side].extend(map(len, seqs))
            self.tokens[side] += len(ids)

    def close(self, key: str) -> None:
        meta = {"key": key, "pairs": len(self.lengths["src"])}
        for side, typ in zip(SIDES, self.id_types):
            lengths = self.lengths[side]
            ltyp = len_type(max(lengths, default=0))
            self.files[side]["len"].write(array(LEN_TYPES[ltyp][0], lengths).tobytes())
            meta[side] = {"tokens": self.tokens[side], "ids": typ, "lengths": ltyp}
        for side in SIDES:
            for kind, f in self.files[side].items():
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.replace(self.tmp[side][kind], self.directory / f"{self.name}.{side}.{kind}")
        atomic_write_bytes(self.directory / f"{self.name}.json", (json.dumps(meta, indent=2) + "\n").encode())

    def abort(self) -> None:
        for side in SIDES:
            for kind, f in self.files[side].items():
                f.close()
                self.tmp[side][kind].unlink(missing_ok=True)


def load_split(directory: Path, name: str, key: str, refs: list[str] | None = None) -> CachedSplit | None:
    """The split if its cache is complete and was built from `key`, else None."""
    try:
        meta = json.loads((directory / f"{name}.json").read_text())
        if meta.get("key") != key:
            return None
        columns = [_column(directory / f"{name}.{side}", meta["pairs"], meta[side]) for side in SIDES]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(c is None for c in columns):
        return None
    return CachedSplit(name, columns[0], columns[1], refs or [])


def _column(prefix: Path, pairs: int, meta: dict) -> Column | None:
    ids_path, len_path = prefix.with_name(prefix.name + ".ids"), prefix.with_name(prefix.name + ".len")
    _, id_dtype = ID_TYPES[meta["ids"]]
    _, len_dtype = LEN_TYPES[meta["lengths"]]
    if (ids_path.stat().st_size != meta["tokens"] * id_dtype.itemsize
            or len_path.stat().st_size != pairs * len_dtype.itemsize):
        return None
    lengths = torch.from_file(str(len_path), size=pairs, dtype=len_dtype) if pairs else \
        torch.zeros(0, dtype=len_dtype)  # read into memory (not mapped: shared=False)
    column = Column(ids_path, meta["ids"], lengths)
    return column if column.tokens == meta["tokens"] else None
