"""diffir: DiffIR (ICCV 2023) and DiffLoss (2024) for image restoration, on basicsr.

Importing diffir is cheap: it installs the basicsr/torchvision compatibility alias (without
importing either) and nothing else, so command lines answer ``--help`` at once. The heavy parts load
on first use: ``diffir.Restorer``, ``diffir.DiffIRS2`` ... import torch and the networks, and
:func:`register` imports every architecture, model, loss and dataset so that basicsr's registries
know them (train.py and test.py call it; ``diffir.archs`` etc. register on import as before).
"""
import importlib

from . import _compat  # noqa: F401  (must run before anything imports basicsr)
from .version import __version__

_SUBPACKAGES = ("archs", "data", "losses", "models")
_ATTRIBUTES = {"DiffIRS1": "archs", "DiffIRS2": "archs", "Restorer": "restorer"}

__all__ = ["DiffIRS1", "DiffIRS2", "Restorer", "__version__", "register"]


def register() -> None:
    """Import every architecture, model, loss and dataset, registering them with basicsr."""
    for name in _SUBPACKAGES:
        importlib.import_module(f".{name}", __name__)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f".{_ATTRIBUTES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
