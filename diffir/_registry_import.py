"""Import every module of a diffir sub-package whose file name ends with a given suffix.

basicsr's own convention (``*_arch.py``, ``*_model.py`` ...): registration happens at import, so a
new file is picked up without editing any ``__init__``.
"""
import importlib
from pathlib import Path


def import_modules(package: str, package_file: str, suffix: str) -> list:
    folder = Path(package_file).parent
    return [importlib.import_module(f"{package}.{path.stem}") for path in sorted(folder.glob(f"*{suffix}.py"))]
