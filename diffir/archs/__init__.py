"""Network architectures. Importing this package registers every ``*_arch.py`` in ARCH_REGISTRY."""
from .._registry_import import import_modules
from .cpen import CPEN
from .diffir_arch import DiffIRS1, DiffIRS2
from .dirformer import DIRformer
from .ipr_diffusion import IPRDenoiser, IPRDiffusion

import_modules(__name__, __file__, "_arch")

__all__ = ["CPEN", "DIRformer", "DiffIRS1", "DiffIRS2", "IPRDenoiser", "IPRDiffusion"]
