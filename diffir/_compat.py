"""Compatibility shims that must run before basicsr is imported.

basicsr 1.4.2 does ``from torchvision.transforms.functional_tensor import rgb_to_grayscale``;
torchvision >= 0.17 removed that public module (it lives on as ``_functional_tensor``).
Registering an alias in ``sys.modules`` is the only change needed, and this is the one
place in diffir that does it: ``diffir/__init__.py`` imports this module first.
"""
import importlib
import sys

_LEGACY = "torchvision.transforms.functional_tensor"


def install_torchvision_alias() -> None:
    if _LEGACY in sys.modules:
        return
    try:
        importlib.import_module(_LEGACY)
    except ImportError:
        try:
            target = importlib.import_module("torchvision.transforms._functional_tensor")
        except ImportError:  # very old or very new layouts: the public API has the function too
            target = importlib.import_module("torchvision.transforms.functional")
        sys.modules[_LEGACY] = target


install_torchvision_alias()
