"""DiffLoss (Tan & Zhao, 2024): a frozen unconditional diffusion model as a training constraint.

The restored image x and the ground truth z are noised with the *same* timestep t and noise ε
(one forward-diffusion step, :class:`ForwardDiffusion`) and both go through the frozen prior
(:class:`~diffir.archs.prior_unet_arch.DiffusionPriorUNet`). Two distances pull x toward z:

* L_nat: mean squared difference of the prior's noise predictions (naturalness);
* L_sem: mean squared difference of its middle-block ("h-space") features (semantics).

The loss returned is ``nat_weight * L_nat + sem_weight * L_sem``; in the paper's
L = L_pix + γ (L_nat + λ L_sem) that is γ = nat_weight and λ = sem_weight / nat_weight. The defaults
are the official code's (1e-3, 1e-6), i.e. γ = 1e-3, λ = 1e-3.

Unlike the official code, the prior's forward pass for x runs with autograd on (its weights stay
frozen), so both terms do send gradients to the restoration network; only the z branch runs under
``torch.no_grad()``. See docs/diffloss.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from ..archs.prior_unet_arch import OFFICIAL_PRIOR, build_prior
from ..schedules import ForwardDiffusion
from ..utils.precision import ALIASES, PRECISIONS, autocast_context, precision_name

# guided-diffusion's create_model arguments for 256x256_diffusion_uncond.pt, the paper's prior
OFFICIAL_PRIOR_OPT = dict(
    image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True, class_cond=False,
    use_checkpoint=False, attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
    num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=True,
    use_new_attention_order=False)

FITS = ("resize", "random_crop", "none")


@LOSS_REGISTRY.register()
class DiffLoss(nn.Module):
    """nat_weight * L_nat + sem_weight * L_sem from a frozen diffusion prior (module docstring).

    Args:
        prior_path: the prior's checkpoint: guided-diffusion's ``256x256_diffusion_uncond.pt`` or a
            checkpoint of :class:`~diffir.models.diffusion_prior_model.DiffusionPriorModel`.
        prior_opt: DiffusionPriorUNet keyword arguments (guided-diffusion's ``create_model``
            arguments); default: those of ``256x256_diffusion_uncond.pt``.
        nat_weight, sem_weight: weights of the two mean squared errors (γ and γ·λ of the paper).
        t_range: timesteps are drawn uniformly from [t_range[0], t_range[1]); default all of them.
        num_timesteps, beta_start, beta_end: the prior's noise schedule (guided-diffusion's linear one).
        input_range: value range of the images given to the loss; mapped linearly to the prior's [-1, 1].
            The targets of each instance's first call are checked against it (a later check would
            cost a GPU synchronisation every step; a wrong range, e.g. 0-255 data, shows at once).
        fit: how images of another size than the prior's ``image_size`` reach it: 'resize'
            (bilinear), 'random_crop' (the same window of prediction and target), or 'none' (as
            they are; the prior is convolutional, sizes must be multiples of its downsampling).
        autocast_dtype: precision of the prior's forward passes: None (the caller's context, e.g.
            ``train.amp``), 'fp32' (full precision even inside autocast), 'bf16' or 'fp16'
            (autocast; with fp16 the tiny weighted gradients may underflow, prefer bf16).
        checkpoint: activation checkpointing in the prior (less memory, one more forward in backward).
        allow_random_prior: with ``prior_path: ~``, use a randomly initialised prior. For tests only:
            such a prior carries no image statistics.
    """

    def __init__(self, prior_path=None, prior_opt: dict | None = None, nat_weight: float = 1e-3,
                 sem_weight: float = 1e-6, t_range=None, num_timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, input_range=(0.0, 1.0), fit: str = "resize", autocast_dtype=None,
                 checkpoint: bool = False, allow_random_prior: bool = False):
        super().__init__()
        if prior_path is None and not allow_random_prior:
            raise ValueError(f"DiffLoss needs prior_path, the diffusion prior's checkpoint; the paper's prior is "
                             f"{OFFICIAL_PRIOR}. (allow_random_prior: true runs with random weights, for tests only)")
        if fit not in FITS:
            raise ValueError(f"DiffLoss fit must be one of {FITS}, got {fit!r}")
        if autocast_dtype is not None and ALIASES.get(autocast_dtype, autocast_dtype) not in PRECISIONS:
            raise ValueError(f"DiffLoss autocast_dtype must be one of {sorted(PRECISIONS) + sorted(ALIASES)} or ~, "
                             f"got {autocast_dtype!r}")
        low, high = (0, num_timesteps) if t_range is None else (int(t_range[0]), int(t_range[1]))
        if not 0 <= low < high <= num_timesteps:
            raise ValueError(f"DiffLoss t_range must satisfy 0 <= low < high <= num_timesteps ({num_timesteps}), "
                             f"got {t_range}")
        if len(input_range) != 2 or not input_range[0] < input_range[1]:
            raise ValueError(f"DiffLoss input_range must be (low, high) with low < high, got {input_range}")

        self.prior_path = prior_path
        self.prior = build_prior(OFFICIAL_PRIOR_OPT if prior_opt is None else prior_opt, prior_path)
        if prior_path is None:
            # guided-diffusion zero-initialises the output conv and each residual branch's last layer,
            # so an untrained prior would predict 0 everywhere and L_nat would vanish; a test prior
            # gets PyTorch's default init there instead
            for module in self.prior.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)) and not module.weight.any():
                    module.reset_parameters()
        self.prior.requires_grad_(False)
        self.prior.eval()
        self.prior.set_activation_checkpointing(checkpoint)
        self.diffusion = ForwardDiffusion(num_timesteps, beta_start, beta_end)
        self.nat_weight = float(nat_weight)
        self.sem_weight = float(sem_weight)
        self.t_range = (low, high)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.range_checked = False
        self.fit = fit
        self.precision = None if autocast_dtype is None else precision_name(autocast_dtype)
        self.checkpoint = checkpoint

    def train(self, mode: bool = True):
        """The prior stays in eval mode whatever the caller asks (no dropout, fixed behaviour)."""
        super().train(mode)
        self.prior.eval()
        return self

    def describe(self) -> str:
        source = self.prior_path if self.prior_path is not None else "RANDOM weights (allow_random_prior)"
        return (f"prior {source} ({self.prior.image_size}px), nat_weight {self.nat_weight:g}, sem_weight "
                f"{self.sem_weight:g}, t in [{self.t_range[0]}, {self.t_range[1]}), fit {self.fit}, precision "
                f"{self.precision or 'caller'}, checkpointing {self.checkpoint}")

    # ------------------------------------------------------------------ input handling
    def _check_images(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        channels = self.prior.in_channels
        if pred.dim() != 4 or pred.shape != target.shape:
            raise ValueError(f"DiffLoss needs pred and target of the same (B, C, H, W) shape, got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        if pred.shape[1] != channels:
            raise ValueError(f"DiffLoss needs {channels}-channel images (the prior's input), got {pred.shape[1]} "
                             f"channels")
        if not self.range_checked:  # first call only: reading the values back syncs with the GPU
            self._check_range(target)
            self.range_checked = True

    def _check_range(self, target: torch.Tensor) -> None:
        low, high = self.input_range
        tol = 1e-3 * (high - low)
        t_min, t_max = (v.item() for v in torch.aminmax(target.detach()))
        if t_min < low - tol or t_max > high + tol:
            raise ValueError(f"DiffLoss target values span [{t_min:.4g}, {t_max:.4g}], outside input_range "
                             f"[{low:g}, {high:g}]; set input_range to the range your images are in")

    def _to_prior_range(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.input_range
        return (x - low) * (2.0 / (high - low)) - 1.0

    def _fit(self, pred: torch.Tensor, target: torch.Tensor):
        size = self.prior.image_size
        h, w = pred.shape[-2:]
        if self.fit == "none" or (h, w) == (size, size):
            return pred, target
        if self.fit == "resize":
            def resize(x):
                return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=h > size or w > size)
            return resize(pred), resize(target)
        if h < size or w < size:
            raise ValueError(f"DiffLoss fit 'random_crop' needs images of at least the prior's {size}x{size}, got "
                             f"{h}x{w}; use fit: resize")
        top = int(torch.randint(0, h - size + 1, ()))
        left = int(torch.randint(0, w - size + 1, ()))
        window = (..., slice(top, top + size), slice(left, left + size))
        return pred[window], target[window]

    def _precision_context(self, device: torch.device):
        return autocast_context(device.type, self.precision)

    # ------------------------------------------------------------------ loss
    def terms(self, pred: torch.Tensor, target: torch.Tensor, t=None, noise=None) -> dict[str, torch.Tensor]:
        """The weighted terms {'l_nat': ..., 'l_sem': ...}, each averaged over the batch.

        ``t`` (int or (B,) tensor) and ``noise`` (shaped like the images after fitting to the prior)
        replace the random draws, making the value reproducible.
        """
        self._check_images(pred, target)
        # noising in at least float32 (outputs of an autocast network may be 16-bit); the prior's own
        # precision is set by autocast_dtype
        pred, target = (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for v in (pred, target))
        x, z = self._fit(self._to_prior_range(pred), self._to_prior_range(target.detach()))
        batch, device = x.shape[0], x.device
        if t is None:
            t = self.diffusion.sample_timesteps(batch, device, *self.t_range)
        else:
            t = torch.as_tensor(t, device=device, dtype=torch.long).reshape(-1)
            if t.numel() not in (1, batch):
                raise ValueError(f"DiffLoss got {t.numel()} timesteps for a batch of {batch}")
            t = t.expand(batch)
            if t.min() < 0 or t.max() >= self.diffusion.num_timesteps:
                raise ValueError(f"DiffLoss t must lie in [0, {self.diffusion.num_timesteps}), got {t.tolist()}")
        if noise is None:
            noise = torch.randn_like(z)
        elif noise.shape != z.shape:
            raise ValueError(f"DiffLoss noise must have the shape of the images as the prior sees them, "
                             f"{tuple(z.shape)}, got {tuple(noise.shape)}")
        noise = noise.to(z)

        channels = self.prior.in_channels  # learn_sigma priors add variance channels; DiffLoss uses ε only
        with torch.no_grad(), self._precision_context(device):
            eps_z, h_z = self.prior(self.diffusion.q_sample(z, t, noise), t)
        with self._precision_context(device):  # with autograd: the gradient path to the restorer
            eps_x, h_x = self.prior(self.diffusion.q_sample(x, t, noise), t)
        l_nat = F.mse_loss(eps_x[:, :channels].float(), eps_z[:, :channels].float())
        l_sem = F.mse_loss(h_x.float(), h_z.float())
        return {"l_nat": self.nat_weight * l_nat, "l_sem": self.sem_weight * l_sem}

    def forward(self, pred: torch.Tensor, target: torch.Tensor, t=None, noise=None) -> torch.Tensor:
        """nat_weight * L_nat + sem_weight * L_sem for the batch (see :meth:`terms`)."""
        terms = self.terms(pred, target, t, noise)
        return terms["l_nat"] + terms["l_sem"]
