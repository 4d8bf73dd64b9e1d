"""diffir: DiffIR (ICCV 2023) and DiffLoss (2024) for image restoration, on basicsr.

Importing diffir installs the basicsr/torchvision compatibility alias and registers every
architecture, model, loss and dataset with basicsr's registries.
"""
from . import _compat  # noqa: F401  (must run before anything imports basicsr)
from . import archs, data, losses, models  # noqa: E402,F401
from .archs import DiffIRS1, DiffIRS2  # noqa: E402
from .restorer import Restorer  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["DiffIRS1", "DiffIRS2", "Restorer", "__version__"]
