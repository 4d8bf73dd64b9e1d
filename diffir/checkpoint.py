"""Reading DiffIR weight files, ours or official: file formats only, no network knowledge.

:func:`read_state_dict` accepts every layout a DiffIR checkpoint comes in:

* basicsr files, ``{'params': ..., 'params_ema': ...}`` (ours and the official SR / deblurring
  releases); ``params_ema`` falls back to ``params`` as in basicsr;
* PyTorch Lightning files of the official inpainting code, ``{'state_dict': {'generator.*': ...}}``,
  whose pickled hyper-parameters are read as inert placeholders (:func:`read_lightning_checkpoint`);
* a bare state dict; a ``module.`` prefix (saved from DDP) is stripped.

Which network a state dict describes is architecture knowledge: :mod:`diffir.archs.detect`.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from .utils import safetensors_io


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not describe a DiffIR network."""


# --------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path, param_key: str = "params_ema") -> tuple[dict[str, torch.Tensor], str]:
    """The network weights stored in ``path`` and a short description of where they were found.

    Files are read with ``torch.load(weights_only=True)``: nothing in them is executed. Lightning
    checkpoints, whose pickled hyper-parameters that refuses, are read with inert placeholders for
    those objects (:func:`read_lightning_checkpoint`). ``.safetensors``
    files (recognised by content, whatever their name) hold one state dict and no code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if safetensors_io.is_safetensors(path):
            content = safetensors_io.load_state_dict(path)[0]
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            content = read_lightning_checkpoint(path)
        except CheckpointError as lightning_err:
            raise CheckpointError(f"{path} stores Python objects besides tensors and is not a Lightning checkpoint "
                                  f"either ({lightning_err}); re-save only its state dict. "
                                  f"({str(err).splitlines()[0]})") from err
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {err}") from err

    if not isinstance(content, Mapping):
        raise CheckpointError(f"{path} holds a {type(content).__name__}, not a dict of weights")
    if "params" in content or "params_ema" in content:
        key = param_key if param_key in content else ("params" if "params" in content else "params_ema")
        state_dict, source = content[key], f"'{key}'"
    elif "state_dict" in content:
        state_dict, source = content["state_dict"], "'state_dict'"
        generator = {k[len("generator."):]: v for k, v in state_dict.items() if k.startswith("generator.")}
        if generator:  # Lightning inpainting checkpoint: keep the generator, drop D, losses, evaluator
            state_dict, source = generator, "'state_dict' (generator.*)"
    else:
        state_dict, source = content, "top level"
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the weights under {source} are not all tensors "
                              f"(e.g. {bad[:3]}); top-level keys are {list(content)[:10]}")
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    return state_dict, source


# --------------------------------------------------------------------------- Lightning files
class _Placeholder:
    """Stands in for any pickled Python object that is not plain data; keeps its arguments, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


def read_lightning_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load`` a Lightning checkpoint safely, with placeholders for its non-tensor Python objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise CheckpointError(f"reading {path} without omegaconf / Lightning needs torch >= 2.5 "
                              f"(this is {torch.__version__})")
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        stubs = [(type(name, (_Placeholder,), {}), name) for name in foreign]
        with torch.serialization.safe_globals(stubs):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files, foreign formats
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    if not isinstance(content, Mapping) or not isinstance(content.get("state_dict"), Mapping):
        keys = list(content)[:10] if isinstance(content, Mapping) else type(content).__name__
        raise CheckpointError(f"{path} is not a Lightning checkpoint: no 'state_dict' mapping (top level: {keys})")
    return dict(content)


# --------------------------------------------------------------------------- network interpolation
def blend_state_dicts(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * first + alpha * second`` for every floating-point tensor (network interpolation).

    Both must come from the same architecture. alpha = 0 and 1 return the endpoints exactly.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"blend alpha must be in [0, 1], got {alpha}")
    if set(first) != set(second):
        only = sorted(set(first) ^ set(second))
        raise ValueError(f"cannot blend checkpoints of different architectures: {len(only)} keys are in only "
                         f"one of them, e.g. {only[:3]}")
    blended = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            raise ValueError(f"cannot blend checkpoints: '{key}' has shape {tuple(a.shape)} vs {tuple(b.shape)}")
        blended[key] = torch.lerp(a, b.to(a.dtype), alpha) if a.is_floating_point() else a.clone()
    return blended
