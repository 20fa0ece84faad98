"""Where and in what precision models run: the one home of device and compute-dtype choice.

`resolve_device` turns ``"auto"`` / ``"cpu"`` / ``"cuda:1"`` into a ``torch.device`` with a clear
error for one this machine does not have; `device_for_rank` picks this process's GPU under
torchrun; `resolve_dtype` checks a compute dtype against the device. `vqtok.load`, the command
line and `vqtok.train.loop.train` all choose their device here.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from pathlib import Path

import torch

from vqtok.errors import ConfigError

__all__ = [
    "SlowDtypeWarning",
    "cpu_has_native_bf16",
    "device_for_rank",
    "resolve_device",
    "resolve_dtype",
]

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device`` reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but CUDA is not available; use --device cpu")
    return resolved


class SlowDtypeWarning(RuntimeWarning):
    """A compute dtype was replaced by float32 because it would be very slow on this device."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86: AVX512-BF16 or AMX; Arm on Linux:
    the BF16 extension). Elsewhere bfloat16 is emulated, which made the model ~50x slower than
    float32 in our measurements; unknown CPUs count as not native (float32 is always right)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "x86", "i386", "i686"):
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    if machine in ("aarch64", "arm64"):
        with contextlib.suppress(OSError):
            return any(line.startswith("Features") and " bf16" in line
                       for line in Path("/proc/cpuinfo").read_text().splitlines())
    return False


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype: None / fp32 / bf16 / fp16 (or a torch dtype). fp16 needs CUDA.

    bfloat16 on a CPU without native bfloat16 (`cpu_has_native_bf16`) falls back to float32
    with a `SlowDtypeWarning`: emulated, it is ~50x slower.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ConfigError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("float16 runs on CUDA only; use fp32 on a CPU")
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "this CPU has no native bfloat16 (AVX512-BF16 / AMX), where bf16 runs ~50x slower "
            "than fp32; using fp32",
            SlowDtypeWarning,
            stacklevel=3,
        )
        return torch.float32
    return dtype



def device_for_rank(device: str) -> str:
    """``auto`` under torchrun picks this process's GPU (LOCAL_RANK)."""
    local = os.environ.get("LOCAL_RANK")
    if device == "auto" and local is not None and torch.cuda.is_available():
        return f"cuda:{local}"
    return device
