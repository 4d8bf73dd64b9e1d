"""The adversarial part a training model owns: the discriminator ``network_d``, its loss and optimiser.

Built from the options (``network_d``, ``path.pretrain_network_d``, ``train.gan_opt``, ``train.optim_d``),
held as ``model.adversarial``; the model's training step asks it for the generator's adversarial loss
(:meth:`AdversarialTraining.generator_loss`) and lets it take the discriminator's step
(:meth:`AdversarialTraining.discriminator_step`). The discriminator is saved as ``net_d_<iter>.pth`` and
in the training state (``net_d``). It is frozen except during its own step, so the generator's
backward never fills its gradients.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss

from ..losses.inpainting_loss import NonSaturatingR1Loss


class AdversarialTraining:
    """ESRGAN-style GAN training (the official GAN stage: basicsr's ``GANLoss`` and UNetDiscriminatorSN).

    D is updated every iteration and G every ``train.net_d_iters`` iterations after
    ``train.net_d_init_iters`` (until then only D learns); ``gan_gt_usm`` selects the real images D sees.
    """

    clip_grad = False  # whether train.grad_clip also clips D's gradient

    def __init__(self, model):
        opt, train_opt = model.opt, model.opt["train"]
        if "network_d" not in opt or not train_opt.get("gan_opt"):
            raise ValueError(f"{type(model).__name__} needs network_d and train.gan_opt")
        self.net_d = model.model_to_device(build_network(opt["network_d"]))
        load_path = opt["path"].get("pretrain_network_d")
        if load_path:
            model.load_network(self.net_d, load_path, opt["path"].get("strict_load_d", True),
                               opt["path"].get("param_key_d", "params"))
        self.net_d.train().requires_grad_(False)
        self.cri_gan = build_loss(dict(train_opt["gan_opt"])).to(model.device)
        self.net_d_iters = train_opt.get("net_d_iters", 1)
        self.net_d_init_iters = train_opt.get("net_d_init_iters", 0)
        self.real_is_gt_usm = bool(opt.get("gan_gt_usm", False))
        self.grad_clip = train_opt.get("grad_clip") if self.clip_grad else None
        self.optim_opt = dict(train_opt["optim_d"])

    def build_optimizer(self, get_optimizer) -> torch.optim.Optimizer:
        """D's optimiser from ``train.optim_d``, made by the model's ``get_optimizer``."""
        optim_opt = dict(self.optim_opt)
        self.optimizer = get_optimizer(optim_opt.pop("type"), self.net_d.parameters(), **optim_opt)
        return self.optimizer

    def generator_due(self, current_iter: int) -> bool:
        return current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters

    def generator_loss(self, output: torch.Tensor, batch: dict, loss_dict: dict) -> torch.Tensor:
        """The generator's adversarial loss on its output (logged in ``loss_dict``)."""
        loss_dict["l_g_gan"] = self.cri_gan(self.net_d(output), True, is_disc=False)
        return loss_dict["l_g_gan"]

    def discriminator_step(self, batch: dict, fake: torch.Tensor) -> OrderedDict:
        """One optimiser step of D on real images from ``batch`` and the generator's ``fake``; returns its log."""
        self.net_d.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        log = self.discriminator_backward(batch, fake.detach())
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net_d.parameters(), float(self.grad_clip))
        self.optimizer.step()
        self.net_d.requires_grad_(False)
        return log

    def discriminator_backward(self, batch: dict, fake: torch.Tensor) -> OrderedDict:
        # one backward per D forward, as basicsr's ESRGAN: the real graph is freed before the fake forward
        real = batch["gt_usm"] if self.real_is_gt_usm and "gt_usm" in batch else batch["gt"]
        real_pred = self.net_d(real)
        l_d_real = self.cri_gan(real_pred, True, is_disc=True)
        l_d_real.backward()
        fake_pred = self.net_d(fake)
        l_d_fake = self.cri_gan(fake_pred, False, is_disc=True)
        l_d_fake.backward()
        return OrderedDict(l_d_real=l_d_real.detach(), l_d_fake=l_d_fake.detach(),
                           out_d_real=real_pred.detach().mean(), out_d_fake=fake_pred.detach().mean())


class InpaintingAdversarialTraining(AdversarialTraining):
    """LaMa's adversarial losses (official inpainting): the NLayerDiscriminator returns (prediction,
    features); G gets the non-saturating loss (``gan_opt: NonSaturatingR1Loss``, mask-aware) plus optional
    discriminator feature matching (``feature_matching_opt``); D gets the R1-regularised loss. D steps
    after every generator step on the same prediction (LaMa re-runs the updated generator; we reuse the
    prediction, saving a forward pass), and ``train.grad_clip`` clips D too (LaMa's gradient_clip_val)."""

    clip_grad = True

    def __init__(self, model):
        super().__init__(model)
        if not isinstance(self.cri_gan, NonSaturatingR1Loss):
            raise ValueError("train.gan_opt must be NonSaturatingR1Loss (it needs the discriminator and the mask)")
        fm_opt = model.opt["train"].get("feature_matching_opt")
        self.cri_fm = build_loss(dict(fm_opt)).to(model.device) if fm_opt else None

    def generator_loss(self, output, batch, loss_dict):
        fake_pred, fake_features = self.net_d(output)
        loss_dict["l_g_gan"] = self.cri_gan.generator_loss(fake_pred, batch["mask"])
        l_total = loss_dict["l_g_gan"]
        if self.cri_fm:
            with torch.no_grad():
                _, real_features = self.net_d(batch["gt"])
            loss_dict["l_g_fm"] = self.cri_fm(fake_features, real_features)
            l_total = l_total + loss_dict["l_g_fm"]
        return l_total

    def discriminator_backward(self, batch, fake):
        l_d, metrics = self.cri_gan.discriminator_loss(self.net_d, batch["gt"], fake, batch["mask"])
        l_d.backward()
        return OrderedDict(l_d=l_d.detach(), **metrics)
