"""SentencePiece subwords: training, loading, encoding, decoding.

This module is the sole owner of the special ids: every model trained here has
pad=0, unk=1, bos=2, eos=3, so batching and the model can rely on them.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from seq2seq.checkpoint import atomic_write_bytes
from seq2seq.config import TokenizerConfig
from seq2seq.errors import Seq2SeqError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
ENCODE_THREADS = min(2, os.cpu_count() or 1)  # SentencePiece encodes a list of lines in parallel


def train_sentencepiece(lines: list[str], cfg: TokenizerConfig, out: Path) -> None:
    """Train one SentencePiece model on the non-empty `lines` (all of them: the caller samples)
    and write it to `out` atomically."""
    lines = [ln for ln in lines if ln.strip()]
    buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer,
            model_type=cfg.type, vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
            input_sentence_size=0, shuffle_input_sentence=False,
            num_threads=2, minloglevel=2, hard_vocab_limit=True,
        )
    except RuntimeError as e:  # e.g. vocab_size larger than the data allows
        msg = str(e).strip().splitlines()[-1]
        raise Seq2SeqError(f"tokenizer: SentencePiece training failed for {out.name}: {msg}") from None
    atomic_write_bytes(out, buffer.getvalue())


@dataclass(frozen=True)
class Vocab:
    """A loaded SentencePiece model with the fixed special ids."""

    path: Path                      # where it was loaded from (for messages)
    sp: spm.SentencePieceProcessor
    data: bytes                     # the serialized model, stored in checkpoints
    checksum: str

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise Seq2SeqError(f"{path}: cannot read SentencePiece model ({e.strerror})") from None
        return cls.from_bytes(data, path)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | Path) -> "Vocab":
        """`path` names where the bytes came from, for messages."""
        path = Path(path)
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except RuntimeError:
            raise Seq2SeqError(f"{path}: not a SentencePiece model") from None
        if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise Seq2SeqError(f"{path}: special ids must be pad=0 unk=1 bos=2 eos=3")
        return cls(path, sp, data, hashlib.sha256(data).hexdigest())

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, lines: list[str]) -> list[list[int]]:
        return self.sp.encode(lines, out_type=int, num_threads=ENCODE_THREADS)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self.sp.decode(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]


@dataclass(frozen=True)
class Tokenizers:
    """Source and target vocabularies; the same object twice when joint."""

    src: Vocab
    tgt: Vocab

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @classmethod
    def load(cls, expdir: Path) -> "Tokenizers":
        joint = expdir / "spm.model"
        if joint.exists():
            v = Vocab.load(joint)
            return cls(v, v)
        return cls(Vocab.load(expdir / "spm.src.model"), Vocab.load(expdir / "spm.tgt.model"))

    def checksums(self) -> dict[str, str]:
        return {"src": self.src.checksum, "tgt": self.tgt.checksum}

    def to_payload(self) -> dict:
        """What a checkpoint stores so that it can translate on its own."""
        return {"joint": self.joint, "src": self.src.data, "tgt": self.tgt.data,
                "checksums": self.checksums()}


def train_tokenizers(src_lines: list[str], tgt_lines: list[str], cfg: TokenizerConfig,
                     expdir: Path) -> Tokenizers:
    """Train joint (on src_lines + tgt_lines) or separate models, from training text only."""
    for stale in ("spm.model", "spm.src.model", "spm.tgt.model"):
        (expdir / stale).unlink(missing_ok=True)
    if cfg.joint:
        train_sentencepiece(src_lines + tgt_lines, cfg, expdir / "spm.model")
    else:
        train_sentencepiece(src_lines, cfg, expdir / "spm.src.model")
        train_sentencepiece(tgt_lines, cfg, expdir / "spm.tgt.model")
    return Tokenizers.load(expdir)
