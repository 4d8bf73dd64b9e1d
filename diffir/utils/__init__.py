"""Small helpers; ``crop_to`` and ``pad_to_multiple`` load torch on first use (``diffir.utils.X`` stays cheap)."""
import importlib

__all__ = ["crop_to", "pad_to_multiple"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".padding", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
