"""Whether training steps run in bfloat16 autocast (`train.mixed_precision`).

A CPU with native bfloat16 arithmetic (x86 AVX512-BF16 or AMX, Arm's BF16 extension) multiplies
bfloat16 matrices about 2.5 times as fast as float32 ones (bench/THROUGHPUT.md); one without it
emulates them, slower than float32. So `auto` turns autocast on only where the processor says it
has the instructions, or on a CUDA GPU that supports bfloat16. Only float32 weights are autocast:
bfloat16 or float16 weights, and 4-bit ones, already compute in their own dtype. The adapter's
weights, their gradients and the optimizer stay float32 either way.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

X86_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_FEATURES = ("bf16",)


@cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions, from the kernel's CPU flags (Linux); False where they
    cannot be read (macOS runs MLX; its torch CPU path stays float32)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    words: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words.update(value.split())
    wanted = X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64", "i686") else ARM_FEATURES
    return any(flag in words for flag in wanted)


def training_autocast(setting: str, device: str, weight_dtype: str) -> bool:
    """Given `train.mixed_precision`, the device and the dtype the weights are loaded in, whether the
    training steps run in bfloat16 autocast."""
    if setting == "off" or weight_dtype.removeprefix("torch.") != "float32":
        return False
    if setting == "bfloat16":
        return True
    if device == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device == "cpu" and cpu_has_native_bf16()
