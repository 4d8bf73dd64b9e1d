"""Training states that load with ``torch.load(weights_only=True)``: resuming never runs code from a file.

A state written by :meth:`diffir.models.base.DiffIRBaseModel.save_training_state` holds tensors, plain
Python values and optimiser / scheduler state dicts. The one exception, numpy's RNG state (a tuple with
an ndarray), is stored as a tensor and plain numbers here and rebuilt on reading. Files that need
anything else to load (states pickled by basicsr or by older diffir versions, or crafted ones) are
refused with :class:`TrainingStateError` naming the file.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle

import numpy as np
import torch
from basicsr.utils import scandir

from .utils.atomic import atomic_torch_save

SUFFIX = ".state"


class TrainingStateError(RuntimeError):
    """A training state that cannot be used; the message names the file."""


class UnsafeTrainingStateError(TrainingStateError):
    """A training state that would need Python objects unpickled (code execution) to load."""


def _plain_numpy_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached_gaussian = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _numpy_state(plain: dict) -> tuple:
    return (plain["name"], plain["keys"].numpy().astype(np.uint32), plain["pos"], plain["has_gauss"],
            plain["cached_gaussian"])


def write_training_state(state: dict, path: str | os.PathLike) -> None:
    """Save ``state`` atomically, in a form :func:`read_training_state` loads with ``weights_only=True``."""
    rng = dict(state["rng"], numpy=_plain_numpy_state(state["rng"]["numpy"]))
    atomic_torch_save(dict(state, rng=rng), path)


def read_training_state(path: str | os.PathLike) -> dict:
    """Load a state written by :func:`write_training_state`; nothing in the file is executed."""
    path = str(path)
    if not osp.isfile(path):
        raise TrainingStateError(f"no training state at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeTrainingStateError(
            f"training state {path} holds Python objects that would have to be executed to load it (written by "
            f"basicsr, an older diffir or someone else); it is refused. ({str(err).splitlines()[0]})") from err
    except Exception as err:  # torch raises several types for truncated files
        raise TrainingStateError(f"training state {path} cannot be read (incomplete or damaged file?): {err}") from err
    if not isinstance(state, dict) or not {"iter", "epoch", "rng", "optimizers", "schedulers"} <= set(state):
        raise TrainingStateError(f"{path} is not a diffir training state")
    state["rng"]["numpy"] = _numpy_state(state["rng"]["numpy"])
    return state


def saved_states(folder: str) -> list[str]:
    """The ``<iter>.state`` files of ``folder``, newest (highest iteration) first."""
    if not osp.isdir(folder):
        return []
    iters = [int(name[: -len(SUFFIX)]) for name in scandir(folder, suffix=SUFFIX) if name[: -len(SUFFIX)].isdigit()]
    return [osp.join(folder, f"{i}{SUFFIX}") for i in sorted(iters, reverse=True)]


def newest_loadable_state(folder: str) -> tuple[str, dict, list[str]] | None:
    """(file, state, damaged) for the newest state of ``folder`` that loads; ``None`` if there is none.

    Newer damaged files (torn write, full disk) are skipped and listed in ``damaged`` with the reason.
    A file refused as unsafe stops the resume: falling back past it would silently discard training
    the user expects to continue.
    """
    damaged = []
    for path in saved_states(folder):
        try:
            return path, read_training_state(path), damaged
        except UnsafeTrainingStateError:
            raise
        except TrainingStateError as err:
            damaged.append(str(err))
    if damaged:
        raise TrainingStateError(f"no training state in {folder} loads: " + "; ".join(damaged))
    return None
