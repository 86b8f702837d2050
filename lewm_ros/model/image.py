"""Pixel conventions of the model: uint8 RGB, channels last, ImageNet normalisation inside the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3) RGB in [0, 255] -> float32 ImageNet-normalised, same shape."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=pixels.device) * 255.0)
    return (pixels.float() - mean) * inv_std


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 frames (..., H, W, 3) to (..., size, size, 3) with antialiased bilinear filtering.

    For feeding camera images or a dataset recorded at another resolution to a model; the model
    itself never resizes, so a wrong image size is reported instead of silently changing results.
    """
    if pixels.shape[-3] == size and pixels.shape[-2] == size:
        return pixels
    lead = pixels.shape[:-3]
    x = pixels.reshape(-1, *pixels.shape[-3:]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return x.reshape(*lead, size, size, 3).contiguous()
