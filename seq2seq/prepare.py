"""`prepare`: resolve the corpus, check it, train SentencePiece, encode and cache splits.

Everything lands in the experiment directory:
  spm.model (or spm.src.model + spm.tgt.model)   SentencePiece, trained on train only
  cache/<split>.pt                                encoded split + the key it was built from
  prepare.json                                    what the tokenizer was trained from
A second run with the same data and tokenizer settings reuses all of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq import corpus
from seq2seq.batching import EncodedSplit
from seq2seq.checkpoint import atomic_write_bytes
from seq2seq.config import Config, to_dict
from seq2seq.errors import Seq2SeqError
from seq2seq.tokenizer import Tokenizers, train_tokenizers


@dataclass
class Prepared:
    tokenizers: Tokenizers
    splits: dict[str, EncodedSplit]      # "train", "valid", then the test names
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
    root = corpus.resolve_data_dir(data_dir or os.environ.get("SEQ2SEQ_DATA_DIR") or d.data_dir or None)
    names = {"train": "train", "valid": d.valid_split, **{t: t for t in d.test_splits}}
    return {name: (corpus.multi30k_path(root, split, d.src, download),
                   corpus.multi30k_path(root, split, d.tgt, download))
            for name, split in names.items() if only is None or name in only}


def prepare(cfg: Config, expdir: Path, data_dir: str | None = None, log=print) -> Prepared:
    expdir.mkdir(parents=True, exist_ok=True)
    files = split_files(cfg, data_dir)
    tokenizers = _tokenizers(cfg, expdir, files["train"], log)
    splits = {name: _encoded(cfg, expdir, name, paths, tokenizers, log) for name, paths in files.items()}
    return Prepared(tokenizers, splits, files)


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise Seq2SeqError(f"{path}: cannot read ({e.strerror})") from None


def _tokenizers(cfg: Config, expdir: Path, train_files: tuple[Path, Path], log) -> Tokenizers:
    meta_path = expdir / "prepare.json"
    want = {"tokenizer": to_dict(cfg.tokenizer), "seed": cfg.train.seed if cfg.tokenizer.seed_sentences else None,
            "train": [_file_digest(p) for p in train_files]}
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
    src, tgt = corpus.read_parallel(*train_files)
    log(f"prepare: training SentencePiece ({cfg.tokenizer.type}, {cfg.tokenizer.vocab_size}, "
        f"{'joint' if cfg.tokenizer.joint else 'separate'}) on {len(src)} training pairs")
    tok = train_tokenizers(src, tgt, cfg.tokenizer, expdir, cfg.train.seed)
    _write_json(meta_path, {"source": want, "checksums": tok.checksums()})
    return tok


def _encoded(cfg: Config, expdir: Path, name: str, paths: tuple[Path, Path],
             tok: Tokenizers, log) -> EncodedSplit:
    key = hashlib.sha256(json.dumps({
        "files": [_file_digest(p) for p in paths], "tok": tok.checksums(),
        "max_len": cfg.data.max_len if name == "train" else None}).encode()).hexdigest()
    path = expdir / "cache" / f"{name}.pt"
    if path.exists():
        try:
            data = torch.load(path, weights_only=True)
            if data.get("key") == key:
                return EncodedSplit(name, _unpack(*data["src"]), _unpack(*data["tgt"]), data["refs"])
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    src_lines, tgt_lines = corpus.read_parallel(*paths)
    src, tgt = tok.src.encode(src_lines), tok.tgt.encode(tgt_lines)
    refs = tgt_lines
    if name == "train":
        src, tgt, refs = _filter_training(src_lines, tgt_lines, src, tgt, cfg.data.max_len, log,
                                          f"{paths[0]}, {paths[1]}")
    split = EncodedSplit(name, src, tgt, refs)
    path.parent.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"key": key, "src": _pack(src), "tgt": _pack(tgt), "refs": refs}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    log(f"prepare: encoded {name}: {len(src)} pairs from {paths[0].name}, {paths[1].name}")
    return split


def _pack(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids as one flat tensor + lengths: torch.load(weights_only=True) unpickles nested lists of
    ints in pure Python, which is slower than encoding the split again."""
    flat = torch.tensor([i for s in seqs for i in s], dtype=torch.int32)
    return flat, torch.tensor([len(s) for s in seqs], dtype=torch.int64)


def _unpack(flat: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    ids, out, start = flat.tolist(), [], 0
    for n in lengths.tolist():
        out.append(ids[start:start + n])
        start += n
    return out


def _filter_training(src_lines, tgt_lines, src, tgt, max_len: int, log, name: str):
    """Drop empty/whitespace-only pairs and pairs longer than max_len pieces (train only)."""
    keep, empty, long = [], 0, 0
    for i, (s, t) in enumerate(zip(src_lines, tgt_lines)):
        if not s.strip() or not t.strip():
            empty += 1
        elif len(src[i]) > max_len or len(tgt[i]) > max_len:
            long += 1
        else:
            keep.append(i)
    if empty or long:
        log(f"prepare: dropped {empty} empty and {long} over-long (> data.max_len = {max_len} pieces) "
            "training pairs")
    if not keep:
        raise Seq2SeqError(f"{name}: no training pair is left after dropping {empty} empty and {long} "
                           f"over-long (> data.max_len = {max_len} pieces) ones")
    return [src[i] for i in keep], [tgt[i] for i in keep], [tgt_lines[i] for i in keep]


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
