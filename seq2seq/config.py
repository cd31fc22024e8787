"""Typed, frozen recipe configuration loaded from TOML.

A recipe is a TOML file with the sections [data], [tokenizer], [model.encoder],
[model.decoder], [model.attention], [model], [train] and [decode]. Every key has a
default here; a recipe states only what differs. `--set section.key=value` overrides
any key with the same type checks. Unknown keys and out-of-range values raise
Seq2SeqError naming the key (and the valid keys or the valid range).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from seq2seq.errors import Seq2SeqError


def _opt(default: Any, *, ge: float | None = None, le: float | None = None,
         gt: float | None = None, choices: tuple | None = None, help: str = "") -> Any:
    """A dataclass field with validation metadata (checked by `validate`)."""
    meta = {"ge": ge, "le": le, "gt": gt, "choices": choices, "help": help}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


TRAIN_PRECISIONS = ("auto", "float32", "bfloat16")            # seq2seq.precision chooses for auto
DECODE_PRECISIONS = ("auto", "float32", "bfloat16", "int8")


@dataclass(frozen=True)
class DataConfig:
    corpus: str = _opt("multi30k", choices=("multi30k", "files"))
    src: str = _opt("de", help="source language (multi30k: en, de, fr, cs)")
    tgt: str = _opt("en", help="target language")
    data_dir: str = _opt("", help="multi30k directory; empty: --data-dir, $SEQ2SEQ_DATA_DIR, data/multi30k")
    # Arbitrary user files (corpus = "files"): [src, tgt] paths, relative to the recipe.
    train: tuple[str, ...] = _opt(())
    valid: tuple[str, ...] = _opt(())
    test: dict = _opt({}, help="{name = [src, tgt]}")
    valid_split: str = _opt("val")
    test_splits: tuple[str, ...] = _opt(("test_2016_flickr",))
    max_len: int = _opt(100, ge=1, help="training pairs longer than this (in pieces) are dropped")


@dataclass(frozen=True)
class TokenizerConfig:
    type: str = _opt("unigram", choices=("unigram", "bpe"))
    vocab_size: int = _opt(8000, ge=16)
    joint: bool = _opt(True, help="one model for source and target")
    character_coverage: float = _opt(1.0, gt=0.0, le=1.0)
    seed_sentences: int = _opt(0, ge=0, help="sentences SentencePiece trains on, a uniform sample drawn while "
                               "reading (seeded by train.seed); 0 = all, up to 500,000 (a sample above)")


@dataclass(frozen=True)
class EncoderConfig:
    cell: str = _opt("lstm", choices=("lstm", "gru"))
    layers: int = _opt(2, ge=1)
    hidden: int = _opt(256, ge=2, help="output size; each direction has hidden/2 when bidirectional")
    embedding: int = _opt(256, ge=1)
    bidirectional: bool = _opt(True)
    dropout: float = _opt(0.2, ge=0.0, le=0.9)
    residual: bool = _opt(False, help="add each layer's input (before dropout) to its output from layer 2 on")


@dataclass(frozen=True)
class DecoderConfig:
    cell: str = _opt("lstm", choices=("lstm", "gru"))
    layers: int = _opt(4, ge=1)
    hidden: int = _opt(256, ge=1)
    embedding: int = _opt(256, ge=1)
    dropout: float = _opt(0.2, ge=0.0, le=0.9)
    residual: str = _opt("gnmt", choices=("gnmt", "dense", "none"))
    residual_from: int = _opt(3, ge=2, help="gnmt residuals start at this layer (1-based)")
    attention_feed: str = _opt("gnmt", choices=("gnmt", "input_feed", "top"))
    bridge: str = _opt("linear", choices=("linear", "none"))
    tie_embeddings: bool = _opt(False, help="output projection shares the target embedding")


@dataclass(frozen=True)
class AttentionConfig:
    type: str = _opt("mlp", choices=("mlp", "dot", "general"))
    hidden: int = _opt(256, ge=1, help="size of the additive (mlp) attention layer")


@dataclass(frozen=True)
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    share_embeddings: bool = _opt(False, help="source and target share one embedding (joint vocab)")
    target_order: str = _opt("left_to_right", choices=("left_to_right", "right_to_left"),
                             help="the order the decoder writes target pieces in; right_to_left models rescore "
                                  "n-best lists (translate --rerank); their output is put back in reading order")

    @property
    def right_to_left(self) -> bool:
        """The decoder writes target pieces backwards (batches and hypotheses are turned around)."""
        return self.target_order == "right_to_left"


@dataclass(frozen=True)
class TrainConfig:
    batch_tokens: int = _opt(2000, ge=1, help="target tokens per batch (padding included)")
    optimizer: str = _opt("adam", choices=("adam", "adamw"))
    lr: float = _opt(1e-3, gt=0.0)
    betas: tuple[float, ...] = _opt((0.9, 0.98))
    weight_decay: float = _opt(0.0, ge=0.0)
    schedule: str = _opt("plateau", choices=("constant", "plateau", "inverse_sqrt"))
    warmup_steps: int = _opt(0, ge=0)
    plateau_factor: float = _opt(0.5, gt=0.0, le=1.0)
    plateau_patience: int = _opt(2, ge=0)
    min_lr: float = _opt(1e-5, ge=0.0)
    clip_norm: float = _opt(1.0, ge=0.0, help="0 disables clipping")
    label_smoothing: float = _opt(0.1, ge=0.0, le=0.9)
    teacher_forcing: float = _opt(1.0, ge=0.0, le=1.0)
    subword_alpha: float = _opt(0.0, ge=0.0, help="subword regularization: each time a training sentence is "
                                "used, draw its segmentation from its subword_nbest best with P^alpha "
                                "(needs tokenizer.type = unigram); 0 = off, the best segmentation")
    subword_nbest: int = _opt(16, ge=2, help="segmentations subword sampling draws from (its cost grows with it)")
    src_word_dropout: float = _opt(0.0, ge=0.0, le=0.95, help="replace each source piece type of a "
                                   "training sentence by UNK with this probability")
    tgt_word_dropout: float = _opt(0.0, ge=0.0, le=0.95, help="the same for the decoder's input pieces "
                                   "(the labels stay whole)")
    max_steps: int = _opt(0, ge=0, help="0 = no limit")
    max_epochs: int = _opt(0, ge=0)
    max_minutes: float = _opt(0.0, ge=0.0)
    valid_every: int = _opt(500, ge=1)
    valid_beam: int = _opt(1, ge=1, help="validation BLEU decoding (1 = greedy)")
    patience: int = _opt(0, ge=0, help="early stop after this many validations without BLEU gain; 0 = off")
    keep_last: int = _opt(2, ge=1, help="step checkpoints kept besides last and best")
    seed: int = _opt(1)
    threads: int = _opt(0, ge=0, help="CPU threads; 0 = torch default")
    device: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("auto", choices=TRAIN_PRECISIONS,
                          help="products in bf16 (weights and Adam stay float32); auto: bf16 where the "
                               "device has it natively (CUDA with bf16; CPUs with avx512_bf16 or amx_bf16)")
    log_every: int = _opt(50, ge=1)
    max_bad_steps: int = _opt(10, ge=1, help="consecutive non-finite steps before giving up")
    tensorboard: bool = _opt(False, help="also write metrics as TensorBoard scalars (needs tensorboard)")


@dataclass(frozen=True)
class DecodeConfig:
    beam: int = _opt(5, ge=1)
    length_penalty: float = _opt(1.0, ge=0.0, help="GNMT alpha")
    coverage_penalty: float = _opt(0.0, ge=0.0, help="GNMT beta")
    max_len_a: float = _opt(1.5, ge=0.0)
    max_len_b: int = _opt(10, ge=0)
    min_len_a: float = _opt(0.0, ge=0.0)
    min_len_b: int = _opt(0, ge=0)
    nbest: int = _opt(1, ge=1)
    no_repeat_ngram: int = _opt(0, ge=0)
    batch_tokens: int = _opt(16000, ge=1, help="source tokens per decoding batch, beams included")
    max_source_len: int = _opt(250, ge=1, help="longer source lines are translated in chunks of this many pieces")
    precision: str = _opt("auto", choices=DECODE_PRECISIONS,
                          help="products of the decoder, attention and output layer; auto: the fastest at "
                               "equal BLEU measured on this kind of device (seq2seq.precision)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


# ---------------------------------------------------------------- dict <-> dataclass


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) for JSON/TOML/checkpoints."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def upgrade(d: dict) -> dict:
    """A config dict written by an earlier version (in a checkpoint), in today's keys:
    train.bf16 (bf16 autocast on CUDA only) became train.precision."""
    train = d.get("train")
    if isinstance(train, dict) and "bf16" in train:
        train = {k: v for k, v in train.items() if k != "bf16"}
        train.setdefault("precision", "auto" if d["train"]["bf16"] else "float32")
        d = {**d, "train": train}
    return d


def from_dict(d: dict, cls: type = Config, prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a dict, checking keys, types and ranges."""
    if not isinstance(d, dict):
        raise Seq2SeqError(f"{prefix.rstrip('.') or 'recipe'} must be a table, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names:
            raise Seq2SeqError(_unknown_key(prefix + key, list(names), prefix))
    values = {}
    for name, f in names.items():
        if name not in d:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_dict(d[name], hint, f"{prefix}{name}.")
        else:
            values[name] = _coerce(d[name], hint, prefix + name)
    obj = cls(**values)
    check_ranges(obj, prefix)
    return obj


RENAMED = {"train.bf16": "train.precision"}  # keys of earlier versions, and what replaced them


def _unknown_key(key: str, valid: list[str], prefix: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    if key in RENAMED:
        hint = f" (renamed: use {RENAMED[key]}; see docs/changes.md)"
    return f"unknown key {key}{hint}; valid keys: {', '.join(prefix + v for v in valid)}"


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            raise Seq2SeqError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise Seq2SeqError(f"{key} must be a table, got {value!r}")
        return {str(k): list(_coerce(v, tuple[str, ...], f"{key}.{k}")) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise Seq2SeqError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Seq2SeqError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Seq2SeqError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise Seq2SeqError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this module


def check_ranges(obj: Any, prefix: str) -> None:
    """Range/choice checks of one section, e.g. a DecodeConfig changed by command-line options."""
    for f in dataclasses.fields(obj):
        _check_value(f, getattr(obj, f.name), prefix + f.name)


def check_decode(settings: dict[str, Any], key: Callable[[str], str] = "decode.{}".format) -> dict[str, Any]:
    """Range-check decode settings by field name before any model is loaded; a value may be a
    list (a grid to try) and None means "not given". `key` names a field in messages (e.g. the
    command-line option). Returns the settings that were given."""
    fields = {f.name: f for f in dataclasses.fields(DecodeConfig)}
    given = {name: v for name, v in settings.items() if v is not None}
    for name, value in given.items():
        if name not in fields:
            raise Seq2SeqError(f"unknown decode setting {name!r}")
        for v in value if isinstance(value, list) else [value]:
            _check_value(fields[name], v, key(name))
    return given


def _check_value(f: dataclasses.Field, v: Any, key: str) -> None:
    m = f.metadata
    if m.get("choices") and v not in m["choices"]:
        raise Seq2SeqError(f"{key} must be one of {', '.join(map(str, m['choices']))}; got {v!r}")
    if m.get("ge") is not None and v < m["ge"]:
        raise Seq2SeqError(f"{key} must be >= {m['ge']}, got {v}")
    if m.get("gt") is not None and v <= m["gt"]:
        raise Seq2SeqError(f"{key} must be > {m['gt']}, got {v}")
    if m.get("le") is not None and v > m["le"]:
        raise Seq2SeqError(f"{key} must be <= {m['le']}, got {v}")


def check_consistency(cfg: Config) -> None:
    """Cross-key rules that a single field cannot express."""
    enc, dec = cfg.model.encoder, cfg.model.decoder
    if enc.bidirectional and enc.hidden % 2:
        raise Seq2SeqError(f"model.encoder.hidden must be even for a bidirectional encoder, got {enc.hidden}")
    if cfg.model.attention.type == "dot" and enc.hidden != dec.hidden:
        raise Seq2SeqError("model.attention.type = 'dot' needs model.encoder.hidden == model.decoder.hidden "
                           f"(got {enc.hidden} and {dec.hidden}); use 'general' or 'mlp'")
    if dec.tie_embeddings and dec.embedding != dec.hidden:
        raise Seq2SeqError("model.decoder.tie_embeddings needs model.decoder.embedding == model.decoder.hidden "
                           f"(got {dec.embedding} and {dec.hidden})")
    if cfg.model.share_embeddings:
        if not cfg.tokenizer.joint:
            raise Seq2SeqError("model.share_embeddings needs tokenizer.joint = true")
        if enc.embedding != dec.embedding:
            raise Seq2SeqError("model.share_embeddings needs model.encoder.embedding == model.decoder.embedding")
    if cfg.data.corpus != "files":
        for key in ("train", "valid", "test"):
            if getattr(cfg.data, key):
                raise Seq2SeqError(f"data.{key} names files, but data.corpus = {cfg.data.corpus!r}; "
                                   "set data.corpus = \"files\" to use your own files")
    else:
        for key in ("train", "valid"):
            if len(getattr(cfg.data, key)) != 2:
                raise Seq2SeqError(f"data.{key} must be [src_path, tgt_path] when data.corpus = 'files'")
        for name, pair in cfg.data.test.items():
            if len(pair) != 2:
                raise Seq2SeqError(f"data.test.{name} must be [src_path, tgt_path]")
    if cfg.train.subword_alpha > 0 and cfg.tokenizer.type != "unigram":
        raise Seq2SeqError("train.subword_alpha needs tokenizer.type = 'unigram' (n-best segmentations "
                           f"come from the unigram model), got {cfg.tokenizer.type!r}")
    betas = cfg.train.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise Seq2SeqError(f"train.betas must be two numbers in [0, 1), got {list(betas)}")
    if cfg.decode.nbest > cfg.decode.beam:
        raise Seq2SeqError(f"decode.nbest must be <= decode.beam ({cfg.decode.beam}), got {cfg.decode.nbest}")


# ---------------------------------------------------------------- loading


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a recipe (or the defaults when path is None) and apply KEY=VALUE overrides."""
    raw: dict = {}
    if path is not None:
        raw = read_toml(Path(path))
        _resolve_paths(raw, Path(path).parent.absolute())
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    cfg = from_dict(raw)
    check_consistency(cfg)
    return cfg


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise Seq2SeqError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as e:
        raise Seq2SeqError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise Seq2SeqError(f"{path}: not UTF-8 text ({e.reason})") from None


def _resolve_paths(raw: dict, base: Path) -> None:
    """Relative file paths in [data] are relative to the recipe file, not the cwd; `~` is
    expanded (config files do not go through a shell)."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    def fix(p: Any) -> Any:
        return str(base / Path(p).expanduser()) if isinstance(p, str) else p
    for key in ("train", "valid"):
        if isinstance(data.get(key), list):
            data[key] = [fix(p) for p in data[key]]
    if isinstance(data.get("test"), dict):
        data["test"] = {k: [fix(p) for p in v] if isinstance(v, list) else v for k, v in data["test"].items()}
    if isinstance(data.get("data_dir"), str) and data["data_dir"]:
        data["data_dir"] = fix(data["data_dir"])


def parse_override(item: str) -> tuple[str, Any]:
    """'model.encoder.layers=3' -> ('model.encoder.layers', 3); values are TOML literals,
    bare words are taken as strings."""
    if "=" not in item:
        raise Seq2SeqError(f"--set expects KEY=VALUE, got {item!r}")
    key, text = (s.strip() for s in item.split("=", 1))
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node, cls, prefix = raw, Config, ""
    for part in parts[:-1]:
        names = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        if part not in names or not dataclasses.is_dataclass(hints[part]):
            raise Seq2SeqError(_unknown_key(prefix + part, [n for n in names if dataclasses.is_dataclass(hints[n])], prefix))
        node = node.setdefault(part, {})
        cls, prefix = hints[part], f"{prefix}{part}."
    names = [f.name for f in dataclasses.fields(cls)]
    if parts[-1] not in names:
        raise Seq2SeqError(_unknown_key(key, names, prefix))
    node[parts[-1]] = value


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML (written into every experiment directory)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{value(k)} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    def section(name: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not (isinstance(v, dict) and k in _SUBTABLES)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in d.items():
            if k not in scalars:
                section(f"{name}.{k}", v)

    for name, d in to_dict(cfg).items():
        section(name, d)
    return "\n".join(lines)


_SUBTABLES = {"encoder", "decoder", "attention"}


def diff(a: Config, b: Config, ignore_sections: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(x):  # recurse into sections only: a dict value (data.test) is one key
            for f in dataclasses.fields(x):
                if prefix + f.name not in ignore_sections:
                    walk(getattr(x, f.name), getattr(y, f.name), f"{prefix}{f.name}.")
        elif x != y:
            out.append(prefix.rstrip("."))

    walk(a, b, "")
    return out
