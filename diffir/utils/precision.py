"""Precision names, one vocabulary for inference (Restorer, ``--half`` / ``--bf16``) and DiffLoss."""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def precision_name(name: str) -> str:
    """The canonical name ('fp32', 'fp16', 'bf16') of a precision or of its torch dtype name."""
    canonical = ALIASES.get(name, name)
    if canonical not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS) + sorted(ALIASES)}, got {name!r}")
    return canonical


def autocast_context(device_type: str, precision: str | None):
    """None: the caller's context; 'fp32': full precision even inside autocast; else autocast to it."""
    if precision is None:
        return nullcontext()
    if PRECISIONS[precision] == torch.float32:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=PRECISIONS[precision])
