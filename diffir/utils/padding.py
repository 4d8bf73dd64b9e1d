"""Pad images to the size a network needs and crop its output back."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the bottom and right of a (B, C, H, W) tensor so H and W are multiples of ``multiple``.

    Reflect padding (what the official inference scripts use) needs a pad smaller than the image;
    images too small for that fall back to replicate padding. Returns the padded tensor and the
    original (H, W), for :func:`crop_to`.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    pad_h, pad_w, fitting_mode = padding_to_multiple(h, w, multiple)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=fitting_mode if mode == "reflect" else mode)
    return x, (h, w)


def padding_to_multiple(height: int, width: int, multiple: int) -> tuple[int, int, str]:
    """Rows and columns to add at the bottom and right, and the padding mode of :func:`pad_to_multiple`:
    'reflect', or 'replicate' where the image is too small to reflect."""
    pad_h, pad_w = -height % multiple, -width % multiple
    return pad_h, pad_w, "replicate" if pad_h >= height or pad_w >= width else "reflect"


def crop_to(y: torch.Tensor, size: tuple[int, int], scale: int = 1) -> torch.Tensor:
    """Crop a network output back to ``size`` (the unpadded input size) times ``scale``."""
    h, w = size
    return y[..., : h * scale, : w * scale]
