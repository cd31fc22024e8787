"""Self-describing checkpoints, written atomically, and the last/best/keep-K policy.

A checkpoint holds everything needed to rebuild and translate (config, SentencePiece
models as bytes) and to resume exactly (optimizer, schedule, sampler position, RNG).
Files: EXPDIR/checkpoints/{last,best,step_<N>}.pt. A killed run leaves either the old or
the new file, never half of one: we write to a temporary file, fsync, then rename.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from seq2seq.errors import Seq2SeqError

FORMAT = "seq2seq-checkpoint-v1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise Seq2SeqError(f"{path}: cannot write ({e.strerror})") from None


def serialize(payload: dict[str, Any]) -> bytes:
    """Checkpoint bytes; a model with non-finite weights is refused (never written)."""
    for name, tensor in payload["model"].items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise Seq2SeqError(f"refusing to write a checkpoint: parameter {name} is not finite "
                               "(the last good checkpoint is kept)")
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    return buffer.getvalue()


def save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, serialize(payload))


def load(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file; a missing, truncated or foreign file is a one-line error.

    mmap=True maps the file instead of reading it: tensors that are never touched (the
    optimizer state, when only translating) cost nothing."""
    path = Path(path)
    if not path.is_file():
        raise Seq2SeqError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)  # plain data only
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            UnicodeDecodeError, AttributeError, ImportError, IndexError, KeyError) as e:
        # a truncated zip archive raises OSError (EINVAL) from torch's reader
        raise Seq2SeqError(f"{path}: not a readable seq2seq checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise Seq2SeqError(f"{path}: not a seq2seq checkpoint")
    return payload


def resolve(model_path: str | Path) -> Path:
    """MODEL is a checkpoint file or an experiment directory (best, else last)."""
    path = Path(model_path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise Seq2SeqError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt (train first)")
    if not path.exists():
        raise Seq2SeqError(f"{path}: no such checkpoint file or experiment directory")
    return path


def save_step(payload: dict[str, Any], expdir: Path, step: int, keep_last: int, is_best: bool) -> None:
    """Write step_<N>.pt and last.pt (and best.pt), then drop all but the newest `keep_last` step files."""
    ckpt_dir = expdir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = serialize(payload)
    if is_best:
        atomic_write_bytes(ckpt_dir / "best.pt", data)
    atomic_write_bytes(ckpt_dir / f"step_{step}.pt", data)
    atomic_write_bytes(ckpt_dir / "last.pt", data)  # the commit point: a resumed run starts here
    for old in step_checkpoints(expdir)[:-keep_last]:
        old.unlink(missing_ok=True)


def step_checkpoints(expdir: Path) -> list[Path]:
    """The kept step checkpoints, oldest first."""
    steps = [(int(m.group(1)), p) for p in (expdir / "checkpoints").glob("step_*.pt")
             if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))]
    return [p for _, p in sorted(steps)]


def trained_in(payload: dict) -> str:
    """The precision a checkpoint's training ran in; checkpoints written before train.precision
    trained in float32."""
    return payload.get("precision", "float32")


def average(paths: list[Path]) -> dict[str, Any]:
    """The element-wise mean of several checkpoints' weights (fairseq's / Marian's trick).

    All must have the same parameters, shapes and vocabularies. The result translates like
    any checkpoint; it carries no optimizer state, so it cannot be resumed from.
    """
    if not paths:
        raise Seq2SeqError("no checkpoints to average")
    first = load(paths[0])
    total = {k: v.double() for k, v in first["model"].items()}
    progress = [first.get("progress")]
    formats = {trained_in(first)}
    for path in paths[1:]:
        payload = load(path)
        _check_compatible(first, paths[0], payload, path)
        for k, v in payload["model"].items():
            total[k] += v.double()
        progress.append(payload.get("progress"))
        formats.add(trained_in(payload))
    model = {k: (total[k] / len(paths)).to(v.dtype) if v.is_floating_point() else v
             for k, v in first["model"].items()}
    return {"config": first["config"], "tokenizer": first["tokenizer"], "model": model,
            "precision": "+".join(sorted(formats)), "averaged_from": [str(p) for p in paths],
            "averaged_progress": progress}  # each input's training progress (None if it had none)


def _check_compatible(a: dict, a_path: Path, b: dict, b_path: Path) -> None:
    if a["tokenizer"]["checksums"] != b["tokenizer"]["checksums"]:
        raise Seq2SeqError(f"{b_path}: its SentencePiece models differ from those of {a_path}")
    if a["config"]["model"] != b["config"]["model"]:  # same shapes can still mean another architecture
        keys = sorted(k for k in a["config"]["model"] if a["config"]["model"][k] != b["config"]["model"].get(k))
        raise Seq2SeqError(f"{b_path}: its model config differs from {a_path} (model.{', model.'.join(keys)})")
    ma, mb = a["model"], b["model"]
    if ma.keys() != mb.keys():
        odd = sorted(set(ma) ^ set(mb))[0]
        raise Seq2SeqError(f"{b_path}: parameters differ from {a_path} (e.g. {odd})")
    for k in ma:
        if ma[k].shape != mb[k].shape:
            raise Seq2SeqError(f"{b_path}: {k} has shape {tuple(mb[k].shape)}, "
                               f"but {tuple(ma[k].shape)} in {a_path}")
