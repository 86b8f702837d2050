"""Choose and apply the training precision: bf16 autocast where the device runs it fast, else fp32."""

from __future__ import annotations

import contextlib
import sys
from functools import lru_cache

import torch

PRECISIONS = ('auto', 'bf16', 'fp32')


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512_BF16 or AMX), read from /proc/cpuinfo.

    Without them bf16 matmuls are emulated and slower than fp32.
    """
    if not sys.platform.startswith('linux'):
        return False
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        return False
    return any(flag in flags.split() for flag in ('avx512_bf16', 'amx_bf16'))


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn ``auto``/``bf16``/``fp32`` into ``bf16`` or ``fp32`` for ``device``.

    ``auto`` takes bf16 on CUDA GPUs that support it and on CPUs with native bf16 instructions
    (measured 1.9x faster for the paper model on an AVX512_BF16 Zen 4, see docs/training.md), fp32
    elsewhere (MPS included).
    """
    if name not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {name!r}')
    if name != 'auto':
        return name
    if device.type == 'cuda':
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    if device.type == 'cpu':
        return 'bf16' if cpu_has_native_bf16() else 'fp32'
    return 'fp32'


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` (a no-op for fp32)."""
    if precision == 'bf16':
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
