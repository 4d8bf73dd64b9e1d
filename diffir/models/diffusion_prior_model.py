"""Train an own unconditional diffusion prior for DiffLoss on any folder of images.

For domains where the ImageNet prior is unavailable or unsuitable. The network is the same
:class:`~diffir.archs.prior_unet_arch.DiffusionPriorUNet` family; it learns to predict the noise ε
of x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε with t uniform over [0, T) (the DDPM "simple" loss,
``train.pixel_opt``, MSE by default), and keeps an EMA copy (``train.ema_decay``). The saved
``net_g_*.pth`` holds ``params`` and ``params_ema``; DiffLoss reads ``params_ema``, so a trained
prior plugs into ``diffloss_opt: {prior_path: .../net_g_latest.pth, prior_opt: <network_g without
type>}`` with the same ``diffusion_opt`` schedule.

Data: ``datasets.train`` of type ImageFolderDataset (images in [0, 1], mapped to [-1, 1]).
Validation reports the ε-prediction MSE of the EMA network at fixed timesteps and noise
(``val_eps_mse``: lower is better; comparable across checkpoints of one run).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from ..losses.diffloss_loss import ForwardDiffusion
from .base import DiffIRBaseModel

VAL_TIMESTEP_COUNT = 10  # evenly spaced timesteps that validation averages over


@MODEL_REGISTRY.register()
class DiffusionPriorModel(DiffIRBaseModel):
    """ε-prediction training of a DiffusionPriorUNet (``network_g``) on unpaired images."""

    batch_keys = ("gt",)

    def __init__(self, opt):
        network_opt = opt["network_g"]
        if network_opt.get("type") != "DiffusionPriorUNet":
            raise ValueError(f"DiffusionPriorModel trains a DiffusionPriorUNet; network_g.type is "
                             f"{network_opt.get('type')!r}")
        if network_opt.get("learn_sigma", False):
            raise ValueError("network_g.learn_sigma must be false: this trainer fits the noise prediction only "
                             "(all DiffLoss uses), so learned-variance channels would stay untrained")
        if network_opt.get("class_cond", False):
            raise ValueError("network_g.class_cond must be false: the images have no class labels")
        schedule = dict(opt.get("train", {}).get("diffusion_opt") or {})
        unknown = set(schedule) - {"num_timesteps", "beta_start", "beta_end"}
        if unknown:
            raise ValueError(f"train.diffusion_opt takes num_timesteps, beta_start, beta_end; got {sorted(unknown)}")
        train_opt = opt.get("train") or {}
        if train_opt.get("diffloss_opt"):
            raise ValueError("train.diffloss_opt makes no sense when training the prior itself; remove it")
        if opt.get("is_train"):  # the noise-prediction loss is the "pixel" loss of this model
            train_opt.setdefault("pixel_opt", {"type": "MSELoss", "loss_weight": 1.0, "reduction": "mean"})
        self.diffusion = ForwardDiffusion(**schedule)
        super().__init__(opt)
        self.diffusion.to(self.device)

    def feed_data(self, data):
        self.gt = data["gt"].to(self.device)
        low, high = torch.stack(torch.aminmax(self.gt)).tolist()  # one device sync
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(f"prior training images must be in [0, 1], got values in [{low:.4g}, {high:.4g}]")

    def compute_losses(self, batch, current_iter):
        """The DDPM "simple" loss replaces the restoration losses: this model trains a prior, not a restorer."""
        x0 = batch["gt"] * 2 - 1
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        eps, _ = self.net_g(self.diffusion.q_sample(x0, t, noise), t)
        loss_dict = OrderedDict(l_eps=self.cri_pix(eps, noise))
        return loss_dict["l_eps"], loss_dict, None

    @torch.no_grad()
    def eps_mse(self, dataloader, seed: int = 0) -> float:
        """Mean ε-prediction MSE of the EMA (else the trained) network over the loader's images,
        at VAL_TIMESTEP_COUNT evenly spaced timesteps with noise from a fixed seed."""
        net = self.get_bare_model(self.net_g_ema if hasattr(self, "net_g_ema") else self.net_g)
        was_training = net.training
        net.eval()
        generator = torch.Generator().manual_seed(seed)
        steps = torch.linspace(0, self.diffusion.num_timesteps - 1, VAL_TIMESTEP_COUNT).round().long()
        total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0  # summed on the device
        for data in dataloader:
            x0 = data["gt"].to(self.device) * 2 - 1
            for step in steps.tolist():
                noise = torch.randn(x0.shape, generator=generator).to(self.device)
                t = torch.full((x0.shape[0],), step, device=self.device, dtype=torch.long)
                eps, _ = net(self.diffusion.q_sample(x0, t, noise), t)
                total += F.mse_loss(eps.float(), noise, reduction="sum").double()
                count += noise.numel()
        net.train(was_training)
        return total.item() / max(count, 1)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        value = self.eps_mse(dataloader)
        name = getattr(dataloader.dataset, "opt", {}).get("name", "val")
        get_root_logger().info(f"Validation {name}: val_eps_mse {value:.6f} (iter {current_iter})")
        if tb_logger:
            tb_logger.add_scalar(f"metrics/{name}/val_eps_mse", value, current_iter)
        self.last_val_eps_mse = value
