"""DDPM noise schedules, in one place for the IPR diffusion (stage two) and DiffLoss's prior.

Schedules are named as diffusers names them:

* ``'linear'``: betas linear in [beta_start, beta_end] (DDPM, guided-diffusion's "linear"; DiffLoss).
* ``'scaled_linear'``: betas linear in sqrt(beta), ``linspace(sqrt(start), sqrt(end), T) ** 2``
  (LDM's "linear"; DiffIR's IPR diffusion).

Every quantity is computed in float64; callers store float32 buffers, as the official code does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

BETA_SCHEDULES = ("linear", "scaled_linear")


def make_betas(schedule: str, timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """The (T,) float64 betas of a named schedule."""
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")
    if timesteps < 1 or not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need timesteps >= 1 and 0 < beta_start <= beta_end < 1, got {timesteps}, {beta_start}, "
                         f"{beta_end}")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), timesteps, dtype=torch.float64) ** 2


def ddpm_quantities(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Everything q(x_t | x_0) and the posterior q(x_{t-1} | x_t, x_0) need, from float64 ``betas``."""
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
        "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
        "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        "posterior_variance": posterior_variance,
        # clipped because the posterior variance is 0 at t = 0
        "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
    }


class ForwardDiffusion(nn.Module):
    """q(x_t | x_0) of a DDPM with a named beta schedule (default 'linear', guided-diffusion's).

    x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, with t in [0, num_timesteps). The products are computed
    in float64 and stored in float32 (non-persistent buffers: they follow ``.to()`` but are never
    saved).
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 schedule: str = "linear"):
        super().__init__()
        self.num_timesteps = num_timesteps
        schedule = ddpm_quantities(make_betas(schedule, num_timesteps, beta_start, beta_end))
        for name in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
            self.register_buffer(name, schedule[name].float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise a batch x0 (B, ...) to the per-sample timesteps t (B,) with the given noise."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self.sqrt_alphas_cumprod[t].reshape(shape).to(x0.dtype)
        s = self.sqrt_one_minus_alphas_cumprod[t].reshape(shape).to(x0.dtype)
        return a * x0 + s * noise

    def sample_timesteps(self, batch: int, device, low: int = 0, high: int | None = None) -> torch.Tensor:
        """t ~ U{low, ..., high - 1} per sample (guided-diffusion's uniform sampler over [0, T))."""
        return torch.randint(low, self.num_timesteps if high is None else high, (batch,), device=device)
