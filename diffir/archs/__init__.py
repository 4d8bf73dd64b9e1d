"""Network architectures. Importing this package registers them in basicsr's ARCH_REGISTRY."""
from .cpen import CPEN
from .diffir_arch import DiffIRS1, DiffIRS2
from .dirformer import DIRformer
from .ipr_diffusion import IPRDenoiser, IPRDiffusion, linear_sqrt_beta_schedule

__all__ = ["CPEN", "DIRformer", "DiffIRS1", "DiffIRS2", "IPRDenoiser", "IPRDiffusion", "linear_sqrt_beta_schedule"]
