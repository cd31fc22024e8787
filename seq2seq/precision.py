"""Which number format the products run in, and why: `train.precision` and `decode.precision`.

    float32   every product in float32 (the reference: outputs and curves as they always were)
    bfloat16  products in bf16 with float32 accumulation; weights, gradients, Adam, the RNN
              states, the loss and the softmax stay float32
    int8      decoding only: products as int8 x int8 -> int32 with per-row and per-channel
              scales (seq2seq.quantize)

`auto` is chosen from the device and, on a CPU, from the instruction set it reports: bf16 is
native only with avx512_bf16 or amx_bf16; elsewhere torch emulates it, many times slower than
float32, so `auto` never picks it there.
"""

from __future__ import annotations

import contextlib
import platform
from functools import lru_cache

import torch

from seq2seq.config import DECODE_PRECISIONS, TRAIN_PRECISIONS
from seq2seq.errors import Seq2SeqError

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 products
# What `decode.precision = "auto"` picks on a CPU with native bf16: the fastest whole
# `translate --beam 5` whose test BLEU stayed within 0.3 of float32 (bench/decode_speed.py,
# numbers in docs/performance.md). On other CPUs it is float32: int8 was not measured there.
AUTO_DECODE_NATIVE_BF16 = "int8"


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in Linux's /proc/cpuinfo (empty elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name (results cards name the machine with it)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def native_bf16(flags: frozenset[str] | set[str]) -> str | None:
    """The flag that shows native bf16 products, or None."""
    return next((f for f in NATIVE_BF16 if f in flags), None)


def cuda_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 natively (Ampere, compute capability 8.0, and later;
    torch.cuda.is_bf16_supported() also says yes where it is only emulated)."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def training(setting: str, device: torch.device, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(float32 | bfloat16, why) for `train.precision = setting` on `device`."""
    _check(setting, TRAIN_PRECISIONS, "train.precision")
    device = torch.device(device)
    if setting == "float32":
        return "float32", "train.precision = float32"
    if device.type == "cuda":
        if cuda_bf16(device):
            return "bfloat16", f"{'auto' if setting == 'auto' else 'train.precision'}: the CUDA device has bf16"
        if setting == "bfloat16":
            raise Seq2SeqError("train.precision = bfloat16: this CUDA device has no native bf16 (compute "
                               "capability below 8.0)")
        return "float32", "auto: the CUDA device has no native bf16 (compute capability below 8.0)"
    if setting == "bfloat16":
        return "bfloat16", "train.precision = bfloat16"
    flag = native_bf16(cpu_flags() if flags is None else flags)
    if flag:
        return "bfloat16", f"auto: the CPU has {flag}"
    return "float32", "auto: the CPU has no native bf16 (no avx512_bf16 or amx_bf16)"


def decoding(setting: str, device: torch.device, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(float32 | bfloat16 | int8, why) for `decode.precision = setting` on `device`."""
    _check(setting, DECODE_PRECISIONS, "decode.precision")
    device = torch.device(device)
    if setting != "auto":
        if setting == "int8" and device.type != "cpu":
            raise Seq2SeqError("decode.precision = int8 is for CPUs; use bfloat16 or float32 on CUDA")
        return setting, f"decode.precision = {setting}"
    if device.type == "cuda":
        return "float32", "auto: on CUDA no lower precision has been measured yet"
    flag = native_bf16(cpu_flags() if flags is None else flags)
    if flag:
        return AUTO_DECODE_NATIVE_BF16, f"auto: the CPU has {flag}; fastest at equal BLEU there"
    return "float32", "auto: the CPU has no native bf16 (no avx512_bf16 or amx_bf16)"


def autocast(precision: str, device: torch.device):
    """The context that runs a training step's products in `precision` (weights stay float32)."""
    if precision == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check(setting: str, choices: tuple[str, ...], key: str) -> None:
    if setting not in choices:
        raise Seq2SeqError(f"{key} must be one of {', '.join(choices)}, got {setting!r}")
