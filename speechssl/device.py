"""Which torch device a setting names: "auto" takes the GPU when there is one."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """The CPU computes bfloat16 natively (avx512_bf16 or AMX), so bf16 autocast is faster
    than fp32 there; elsewhere it is emulated and slower. Linux only: False where
    ``cpuinfo`` cannot be read."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
