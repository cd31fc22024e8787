"""`prepare`: resolve the corpus, check it, train SentencePiece, encode and cache splits.

Everything lands in the experiment directory:
  spm.model (or spm.src.model + spm.tgt.model)   SentencePiece, trained on (a sample of) train
  cache/<split>.{src,tgt}.{ids,len}, <split>.json  encoded splits as flat arrays (seq2seq.dataset)
  prepare.json                                    what the tokenizer was trained from
A second run with the same data and tokenizer settings reuses all of it.

Nothing here holds a whole split in memory: the corpus is read and encoded in chunks of
CHUNK_PAIRS pairs (SentencePiece encodes each chunk with both cores) and appended to the arrays;
SentencePiece trains on at most SAMPLE_SENTENCES sentences (or tokenizer.seed_sentences), drawn
while streaming. The raw reference lines of the scored splits (valid, tests) are read from the
original files, never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from seq2seq import corpus, multi30k
from seq2seq.checkpoint import atomic_write_bytes
from seq2seq.config import Config, to_dict
from seq2seq.dataset import CachedSplit, SplitWriter, load_split
from seq2seq.errors import Seq2SeqError
from seq2seq.tokenizer import Tokenizers, train_tokenizers

CHUNK_PAIRS = 20_000
# tokenizer.seed_sentences = 0: every training sentence while there are at most this many
# (per model: source and target together for a joint one), else a uniform sample of this many.
SAMPLE_SENTENCES = 500_000
_SAMPLE_SEED = 1  # the automatic sample's; an explicit seed_sentences sample uses train.seed


@dataclass
class Prepared:
    tokenizers: Tokenizers
    splits: dict[str, CachedSplit]       # "train", "valid", then the test names
    files: dict[str, tuple[Path, Path]]  # the raw (src, tgt) files of each split


def split_names(cfg: Config) -> list[str]:
    """"train", "valid", then the test split names."""
    tests = cfg.data.test if cfg.data.corpus == "files" else cfg.data.test_splits
    return ["train", "valid", *tests]


def split_files(cfg: Config, data_dir: str | None = None, only: list[str] | None = None,
                download: bool = True) -> dict[str, tuple[Path, Path]]:
    """Map split name -> (src file, tgt file) for the recipe's corpus (`only` those splits).
    Multi30K comes from --data-dir, else $SEQ2SEQ_DATA_DIR, else data.data_dir, else data/multi30k."""
    d = cfg.data
    if d.corpus == "files":
        files = {"train": tuple(map(Path, d.train)), "valid": tuple(map(Path, d.valid))}
        files.update({name: tuple(map(Path, pair)) for name, pair in d.test.items()})
        return {k: v for k, v in files.items() if only is None or k in only}
    root = multi30k.resolve_data_dir(data_dir or os.environ.get("SEQ2SEQ_DATA_DIR") or d.data_dir or None)
    names = {"train": "train", "valid": d.valid_split, **{t: t for t in d.test_splits}}
    return {name: (multi30k.split_file(root, split, d.src, download),
                   multi30k.split_file(root, split, d.tgt, download))
            for name, split in names.items() if only is None or name in only}


def prepare(cfg: Config, expdir: Path, data_dir: str | None = None, log=print) -> Prepared:
    expdir.mkdir(parents=True, exist_ok=True)
    files = split_files(cfg, data_dir)
    digests = _Digests(expdir / "cache" / "digests.json")
    tokenizers = _tokenizers(cfg, expdir, files["train"], digests, log)
    splits = {name: _encoded(cfg, expdir, name, paths, tokenizers, digests, log) for name, paths in files.items()}
    digests.save()
    return Prepared(tokenizers, splits, files)


class _Digests:
    """sha256 of the input files' whole content, remembered with each file's identity: size,
    modification time, inode change time (ctime), inode and device. A run over unchanged files
    (every training start, every DDP rank) does not read gigabytes again; any change of the
    identity hashes the file anew, and the caches are keyed by the content digest.

    A copy made with `cp -p` or `rsync -a` keeps size and mtime but not ctime or inode (ctime
    cannot be set by a user: the kernel stamps it on every write, rename and chmod), so it is
    hashed again. What this can still miss: a file rewritten in place within one tick of a
    filesystem's ctime clock (coarse on some network and FAT filesystems) to the same size and
    mtime, or changed behind the kernel's back (a raw device write, a clock set backwards)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.known = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def __call__(self, file: Path) -> str:
        try:
            st = file.stat()
        except OSError:
            return file_digest(file)  # names the file in its error
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        entry = self.known.get(str(file.absolute()))
        if not (isinstance(entry, dict) and entry.get("stamp") == stamp):
            entry = {"stamp": stamp, "sha256": file_digest(file)}
            self.known[str(file.absolute())] = entry
            self.changed = True
        return entry["sha256"]

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(self.path, self.known)


def _tokenizers(cfg: Config, expdir: Path, train_files: tuple[Path, Path], digest, log) -> Tokenizers:
    meta_path = expdir / "prepare.json"
    want = {"tokenizer": to_dict(cfg.tokenizer), "seed": cfg.train.seed if cfg.tokenizer.seed_sentences else None,
            "train": [digest(p) for p in train_files]}
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("source") == want:
                tok = Tokenizers.load(expdir)
                if tok.checksums() == meta.get("checksums"):
                    log(f"prepare: reusing SentencePiece model(s) in {expdir}")
                    return tok
        except (json.JSONDecodeError, Seq2SeqError):
            pass  # stale or damaged: retrain below
    if (expdir / "checkpoints" / "last.pt").exists():
        raise Seq2SeqError(f"{expdir} holds a trained model whose SentencePiece model was made from other "
                           "training data or tokenizer settings; retraining it would orphan the checkpoints "
                           "(use another --out)")
    k, seed = ((cfg.tokenizer.seed_sentences, cfg.train.seed) if cfg.tokenizer.seed_sentences
               else (SAMPLE_SENTENCES, _SAMPLE_SEED))
    for _ in corpus.read_parallel_chunks(*train_files, CHUNK_PAIRS):
        pass  # aligned, readable and not empty, before SentencePiece trains on it
    src_path, tgt_path = train_files
    if cfg.tokenizer.joint:
        src, tgt = sample_lines([src_path, tgt_path], k, seed), []
    else:
        src, tgt = sample_lines([src_path], k, seed), sample_lines([tgt_path], k, seed)
    log(f"prepare: training SentencePiece ({cfg.tokenizer.type}, {cfg.tokenizer.vocab_size}, "
        f"{'joint' if cfg.tokenizer.joint else 'separate'}) on {len(src) + len(tgt)} training sentences")
    tok = train_tokenizers(src, tgt, cfg.tokenizer, expdir)
    _write_json(meta_path, {"source": want, "checksums": tok.checksums()})
    return tok


def _encoded(cfg: Config, expdir: Path, name: str, paths: tuple[Path, Path],
             tok: Tokenizers, digest, log) -> CachedSplit:
    scored = name != "train"
    key = hashlib.sha256(json.dumps({
        "files": [digest(p) for p in paths], "tok": tok.checksums(),
        "max_len": None if scored else cfg.data.max_len, "format": 2}).encode()).hexdigest()
    refs = corpus.read_lines(paths[1]) if scored else None  # the raw targets that BLEU is scored on
    cache = expdir / "cache"
    split = load_split(cache, name, key, refs)
    if split is not None:
        return split
    writer = SplitWriter(cache, name, (len(tok.src), len(tok.tgt)))
    dropped = [0, 0]  # empty, over-long (train only)
    try:
        for src_lines, tgt_lines in corpus.read_parallel_chunks(*paths, CHUNK_PAIRS):
            src, tgt = tok.src.encode(src_lines), tok.tgt.encode(tgt_lines)
            if not scored:
                src, tgt = _filter_training(src_lines, tgt_lines, src, tgt, cfg.data.max_len, dropped)
            writer.add(src, tgt)
        pairs = len(writer.lengths["src"])
        if not scored and dropped != [0, 0]:
            log(f"prepare: dropped {dropped[0]} empty and {dropped[1]} over-long (> data.max_len = "
                f"{cfg.data.max_len} pieces) training pairs")
        if not pairs:
            raise Seq2SeqError(f"{paths[0]}, {paths[1]}: no training pair is left after dropping {dropped[0]} "
                               f"empty and {dropped[1]} over-long (> data.max_len = {cfg.data.max_len} pieces) ones")
        writer.close(key)
    except BaseException:  # bad input, a full disk, Ctrl-C: nothing half-written stays behind
        writer.abort()
        raise
    log(f"prepare: encoded {name}: {pairs} pairs from {paths[0].name}, {paths[1].name}")
    split = load_split(cache, name, key, refs)
    if split is None:
        raise Seq2SeqError(f"{cache}: the {name} split just written does not read back (disk full or changing?)")
    return split


def _filter_training(src_lines: list[str], tgt_lines: list[str], src: list[list[int]], tgt: list[list[int]],
                     max_len: int, dropped: list[int]) -> tuple[list[list[int]], list[list[int]]]:
    """Drop empty/whitespace-only pairs and pairs longer than max_len pieces (train only);
    dropped counts [empty, over-long] across chunks."""
    keep = []
    for i, (s, t) in enumerate(zip(src_lines, tgt_lines)):
        if not s.strip() or not t.strip():
            dropped[0] += 1
        elif len(src[i]) > max_len or len(tgt[i]) > max_len:
            dropped[1] += 1
        else:
            keep.append(i)
    return [src[i] for i in keep], [tgt[i] for i in keep]


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def sample_lines(paths: list[Path], k: int, seed: int) -> list[str]:
    """Non-empty lines of the files, in order while there are at most k of them, else a
    uniform sample of k (reservoir sampling, seeded): never more than k lines in memory."""
    rng, sample, seen = random.Random(seed), [], 0
    for path in paths:
        with corpus.open_binary(path) as f:
            for chunk in corpus.read_line_chunks(f, 10_000, str(path)):
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
