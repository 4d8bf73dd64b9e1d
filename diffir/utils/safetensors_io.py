"""DiffIR weights as ``.safetensors``: tensors only (nothing to unpickle), plus metadata saying what they are.

A diffir safetensors file holds one flat state dict (the official key layout) and string metadata:

* ``diffir.network_g``: the network options (JSON, ``type`` included), so the file alone builds its network;
* ``diffir.source`` / ``diffir.source_sha256``: the file it was converted from and that file's SHA-256
  (``diffir-convert``), or ``diffir.param_key`` for files saved by training.

DiffIRS2 exposes some modules under two names (``denoise.*`` is ``diffusion.model.*``); safetensors
refuses tensors that share memory, so :func:`save_state_dict` stores a copy of each alias, keeping the
official key set that a strict ``load_state_dict`` expects.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from .atomic import atomic_torch_save, atomic_write_bytes

OPTIONS_KEY = "diffir.network_g"


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file (by content: an 8-byte header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file (on the CPU) and its metadata."""
    tensors = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, metadata


def recorded_network_options(path: str | os.PathLike) -> dict | None:
    """The network options recorded in a diffir safetensors file; None for other files or without them."""
    path = Path(path)
    if not path.is_file() or not is_safetensors(path):
        return None
    with safe_open(str(path), framework="pt", device="cpu") as f:
        recorded = (f.metadata() or {}).get(OPTIONS_KEY)
    if recorded is None:
        return None
    try:
        options = json.loads(recorded)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata '{OPTIONS_KEY}' is not valid JSON ({err})") from err
    if not isinstance(options, dict) or "type" not in options:
        raise ValueError(f"{path}: metadata '{OPTIONS_KEY}' is not a network option block with a 'type'")
    return options


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                    metadata: Mapping[str, str] | None = None, network_options: Mapping | None = None) -> None:
    """Write ``state_dict`` to ``path`` as safetensors, atomically; ``network_options`` go into the metadata."""
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    if network_options is not None:
        metadata[OPTIONS_KEY] = json.dumps(dict(network_options), sort_keys=True)
    seen_storage = set()
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if storage in seen_storage:  # an alias (or a view) of a tensor already stored: safetensors needs a copy
            value = value.clone()
        seen_storage.add(storage)
        tensors[key] = value
    # serialised in memory, then written like every other diffir output (safetensors' own writer makes 0600 files)
    atomic_write_bytes(path, save(tensors, metadata=metadata))


SAVE_FORMATS = ("pth", "safetensors")


def save_network_weights(weights: Mapping[str, Mapping[str, torch.Tensor]], stem: str | os.PathLike,
                         save_format: str = "pth", network_options: Mapping | None = None) -> Path:
    """Save a training run's network file ``stem.pth`` or ``stem.safetensors``; returns its path.

    ``weights`` is basicsr's ``{param_key: state_dict}``. ``pth`` keeps all of them (basicsr's layout);
    ``safetensors`` holds one state dict: ``params_ema`` when there is one (what inference loads),
    else the first, named in the metadata with the network options.
    """
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"logger.save_format must be one of {SAVE_FORMATS}, got {save_format!r}")
    path = Path(f"{stem}.{save_format}")
    if save_format == "pth":
        atomic_torch_save(dict(weights), path)
        return path
    param_key = "params_ema" if "params_ema" in weights else next(iter(weights))
    save_state_dict(weights[param_key], path, {"format": "pt", "diffir.param_key": param_key}, network_options)
    return path
