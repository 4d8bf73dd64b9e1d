"""Compatibility shims that must be in place before basicsr is imported.

basicsr 1.4.2 does ``from torchvision.transforms.functional_tensor import rgb_to_grayscale``;
torchvision >= 0.17 removed that public module (it lives on as ``_functional_tensor``). A finder on
``sys.meta_path`` answers that one name with an alias of the module that has the functions, and only
when torchvision itself does not provide it: installing the finder imports nothing, so ``import
diffir`` stays fast (``--help`` must not wait for torch). This is the one place in diffir that does
it: ``diffir/__init__.py`` imports this module first.
"""
import importlib
import importlib.abc
import importlib.machinery
import sys

_LEGACY = "torchvision.transforms.functional_tensor"
_TARGETS = ("torchvision.transforms._functional_tensor", "torchvision.transforms.functional")


class _LegacyAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != _LEGACY:
            return None
        for finder in sys.meta_path:  # torchvision's own module, when it still has it, comes first
            if finder is not self and getattr(finder, "find_spec", None) and finder.find_spec(fullname, path, target):
                return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        return None  # a plain module, filled in by exec_module

    def exec_module(self, module):
        for name in _TARGETS:  # very old or very new layouts: the public API has the functions too
            try:
                target = importlib.import_module(name)
            except ImportError:
                continue
            module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
            return
        raise ImportError(f"none of {', '.join(_TARGETS)} exists to stand in for {_LEGACY}")


def install_torchvision_alias() -> None:
    if not any(isinstance(finder, _LegacyAliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LegacyAliasFinder())


install_torchvision_alias()
