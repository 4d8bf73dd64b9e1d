"""Load the official-code fixtures in tests/fixtures (see README there).

The fixture stores parameters as a recipe: every value comes from an integer hash of
(index, crc32("<model_seed>:<canonical key>")), scaled per kind of parameter. This module
re-derives them; the stored SHA-256 of each tensor guards the derivation.
"""
from __future__ import annotations

import hashlib
import math
import zlib
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
_MASK31 = 0x7FFFFFFF


def _hash_uniform(n: int, seed: int) -> torch.Tensor:
    """n float64 values in [-1, 1) from a 31-bit integer hash of (index, seed)."""
    h = (torch.arange(n, dtype=torch.int64) * 0x9E3779B1 + seed) & _MASK31
    h = (((h >> 15) ^ h) * 0x2C1B3C6D) & _MASK31
    h = (((h >> 12) ^ h) * 0x297A2D39) & _MASK31
    h = (h >> 15) ^ h
    return h.to(torch.float64) / 1073741824.0 - 1.0


def _param_value(key: str, shape, model_seed: int, dtype) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    u = _hash_uniform(math.prod(shape), zlib.crc32(f"{model_seed}:{key}".encode())).reshape(shape)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "temperature":
        value = 1.0 + 0.5 * u
    elif len(shape) == 1:
        value = 1.0 + 0.25 * u if leaf == "weight" else 0.1 * u  # norm gains / biases
    else:
        value = u * math.sqrt(3.0 / math.prod(shape[1:]))  # conv / linear weights
    return value.to(dtype)


def materialize(spec: dict, dtype=None) -> dict[str, torch.Tensor]:
    """The official state dict (official key names and order) described by a fixture spec."""
    dtype = dtype or getattr(torch, spec["dtype"])
    out = {}
    for key, entry in spec["entries"].items():
        if entry["kind"] == "param":
            out[key] = _param_value(entry["canonical"], entry["shape"], spec["model_seed"], dtype)
        else:
            out[key] = spec["buffers"][key].clone()
    return out


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def load_fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)
