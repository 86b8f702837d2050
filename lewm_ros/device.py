"""Pick the torch device for inference or training (cuda, then mps, then cpu) and count CPU cores."""

from __future__ import annotations

import os

import torch

DEVICE_CHOICES = ('auto', 'cpu', 'cuda', 'mps')


def resolve_device(name: str = 'auto') -> torch.device:
    """Return the device called ``name``; ``auto`` takes the fastest one present.

    Raises ``ValueError`` when an explicit device is asked for but is not available, so a
    misconfigured robot fails at start instead of silently planning on the CPU.
    """
    if name not in DEVICE_CHOICES and not name.startswith('cuda:'):
        raise ValueError(f"device must be one of {DEVICE_CHOICES} or 'cuda:N', got {name!r}")
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} requested but torch sees no CUDA GPU')
    if name == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but it is not available")
    return torch.device(name)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
