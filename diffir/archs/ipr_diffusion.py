"""The IPR diffusion of DiffIR stage two: a T-step (T = 4) diffusion on the 256-d IPR vector.

* Schedule: LDM's "linear" schedule, linear in sqrt(beta):
  ``betas = linspace(sqrt(linear_start), sqrt(linear_end), T) ** 2``; every derived quantity is
  computed in float64 and stored as a float32 buffer, exactly as the official code registers them.
* Denoiser: an MLP fed ``[condition, t / max_period, x_t]`` that predicts the clean IPR x0
  (x0-parameterisation), with ``max_period = 10 * T``.
* Reverse step: ``x_{t-1} = coef1[t] * x0_hat + coef2[t] * x_t``, the posterior mean with no noise
  added (the official step draws a noise tensor and discards it; we skip that draw, which changes no
  output). At t = 0, coef1 = 1 and coef2 = 0, so the final IPR is the last x0 prediction.
* Training (``self.training``): start from ``q_sample(IPR_S1, T - 1)`` and run all T steps with
  gradients, returning every intermediate IPR. Inference: start from N(0, I).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..schedules import ddpm_quantities, make_betas
from .cpen import IPR_DIM

class _LinearLReLU(nn.Module):
    """Linear + LeakyReLU(0.1). Official name ``ResMLP``, but it has no residual add (key ``resmlp.0``)."""

    def __init__(self, features: int):
        super().__init__()
        self.resmlp = nn.Sequential(nn.Linear(features, features), nn.LeakyReLU(0.1, True))

    def forward(self, x):
        return self.resmlp(x)


class IPRDenoiser(nn.Module):
    """Predicts the clean IPR x0 from ``[condition (256), t / max_period (1), x_t (256)]``."""

    def __init__(self, n_denoise_res: int = 1, timesteps: int = 4):
        super().__init__()
        self.max_period = timesteps * 10
        self.resmlp = nn.Sequential(
            nn.Linear(2 * IPR_DIM + 1, IPR_DIM), nn.LeakyReLU(0.1, True),
            *[_LinearLReLU(IPR_DIM) for _ in range(n_denoise_res)],
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # t / max_period in float32 even in a float64 model, as the official code computes it
        t_scaled = (t.float() / self.max_period).view(-1, 1).to(x.dtype)
        return self.resmlp(torch.cat([cond, t_scaled, x], dim=1))


class IPRDiffusion(nn.Module):
    """x0-parameterised DDPM on the IPR, conditioned on CPEN_S2's vector of the LQ image.

    ``model`` (the denoiser) and ``condition`` (CPEN_S2) are the same module objects that DiffIRS2
    holds as ``denoise`` and ``condition``; registering them here too reproduces the official
    state-dict keys ``diffusion.model.*`` and ``diffusion.condition.*`` (shared tensors: parameters
    are counted and optimised once).
    """

    def __init__(self, denoise: IPRDenoiser, condition: nn.Module, linear_start=0.1, linear_end=0.99, timesteps=4):
        super().__init__()
        self.num_timesteps = timesteps
        # LDM's "linear" schedule is linear in sqrt(beta): diffusers' 'scaled_linear'
        for name, value in ddpm_quantities(make_betas("scaled_linear", timesteps, linear_start, linear_end)).items():
            self.register_buffer(name, value.float())
        self.model = denoise
        self.condition = condition

    def q_sample(self, x_start: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) for a step t shared by the batch."""
        return self.sqrt_alphas_cumprod[t] * x_start + self.sqrt_one_minus_alphas_cumprod[t] * noise

    def p_step(self, x_t: torch.Tensor, t: int, cond: torch.Tensor) -> torch.Tensor:
        """One deterministic reverse step: the posterior mean given the predicted x0."""
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0_pred = self.model(x_t, t_batch, cond)
        return self.posterior_mean_coef1[t] * x0_pred + self.posterior_mean_coef2[t] * x_t

    def reverse(self, x_t: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
        """Run steps T-1 ... 0 from x_t; returns the IPR after each step (the last is the estimate)."""
        iprs = []
        for t in reversed(range(self.num_timesteps)):
            x_t = self.p_step(x_t, t, cond)
            iprs.append(x_t)
        return iprs

    def sample(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The IPR estimate for the condition ``cond``: all reverse steps from the initial ``noise``."""
        if noise.shape != cond.shape:
            raise ValueError(f"noise must have shape {tuple(cond.shape)}, got {tuple(noise.shape)}")
        return self.reverse(noise.to(cond), cond)[-1]

    def forward(self, lq: torch.Tensor, ipr_s1: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """Training mode: ``(ipr, [ipr after each step])`` starting from the noised ``ipr_s1``.
        Eval mode: the estimated IPR, starting from ``noise`` or a fresh N(0, I) draw."""
        if self.training:
            if ipr_s1 is None:
                raise ValueError("training mode needs the stage-one IPR (ipr_s1) to start the diffusion from")
            if noise is None:
                noise = torch.randn(ipr_s1.shape, dtype=ipr_s1.dtype, device=ipr_s1.device, generator=generator)
            x_t = self.q_sample(ipr_s1, self.num_timesteps - 1, noise.to(ipr_s1))
            cond = self.condition(lq)
            iprs = self.reverse(x_t, cond)
            return iprs[-1], iprs
        if noise is None:
            noise = self.initial_noise(lq, generator)
        return self.sample(self.condition(lq), noise)

    @staticmethod
    def initial_noise(lq: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The (B, 256) N(0, I) start of sampling, drawn as the official code draws it: first, before
        CPEN_S2 runs, in the default dtype, on ``lq``'s device."""
        return torch.randn((lq.shape[0], IPR_DIM), device=lq.device, generator=generator)
