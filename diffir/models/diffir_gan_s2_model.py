"""Adversarial training for the DiffIR models (GAN-based and real-world SR)."""
from collections import OrderedDict

from basicsr.utils.registry import MODEL_REGISTRY

from .diffir_s1_model import DiffIRS1Model
from .diffir_s2_model import DiffIRS2Model
from .discriminator import DiscriminatorMixin


class AdversarialMixin(DiscriminatorMixin):
    """``gan_opt`` + a discriminator ``network_d`` (basicsr's UNetDiscriminatorSN in the official
    configs) on top of a DiffIR model's own losses. As in basicsr's ESRGAN, D is updated every
    iteration and G every ``net_d_iters`` iterations after ``net_d_init_iters`` (until then only D
    learns); ``gan_gt_usm`` selects the real images D sees."""

    def init_training_settings(self):
        self.build_discriminator()
        self.net_d_iters = self.opt["train"].get("net_d_iters", 1)
        self.net_d_init_iters = self.opt["train"].get("net_d_init_iters", 0)
        super().init_training_settings()

    def compute_losses(self, batch, current_iter):
        l_total, loss_dict, output = super().compute_losses(batch, current_iter)
        if output is not None:
            loss_dict["l_g_gan"] = self.cri_gan(self.net_d(output), True, is_disc=False)
            l_total = l_total + loss_dict["l_g_gan"]
        return l_total, loss_dict, output

    def generator_due(self, current_iter):
        return current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters

    def discriminator_backward(self):
        # one backward per D forward, as basicsr's ESRGAN: the real graph is freed before the fake forward
        real = self.gt_usm if self.opt.get("gan_gt_usm") and hasattr(self, "gt_usm") else self.gt
        real_pred = self.net_d(real)
        l_d_real = self.cri_gan(real_pred, True, is_disc=True)
        l_d_real.backward()
        fake_pred = self.net_d(self.output.detach())
        l_d_fake = self.cri_gan(fake_pred, False, is_disc=True)
        l_d_fake.backward()
        return OrderedDict(l_d_real=l_d_real.detach(), l_d_fake=l_d_fake.detach(),
                           out_d_real=real_pred.detach().mean(), out_d_fake=fake_pred.detach().mean())


@MODEL_REGISTRY.register()
class DiffIRGANS1Model(AdversarialMixin, DiffIRS1Model):
    """Stage one with perceptual and adversarial losses (optional; the official recipes train
    stage one with L1 only)."""


@MODEL_REGISTRY.register()
class DiffIRGANS2Model(AdversarialMixin, DiffIRS2Model):
    """Stage two + perceptual + adversarial losses: the official GAN stage (``DiffIRGANS2Model``).

    The real-world SR GAN configs set only ``lr_sr``, ``gamma_sr``, ``lr_decay_sr``: the G rate is
    then ``lr_sr * gamma_sr ** (iter // lr_decay_sr)`` (official), replacing the scheduler's value.
    The encoder phase of DiffIRS2Model still applies when ``encoder_iter`` > 0 (the official GAN
    configs start from a trained stage-two model and use none)."""

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        train_opt = self.opt["train"]
        if train_opt.get("lr_sr") is None or train_opt.get("lr_encoder") is not None:
            super().update_learning_rate(current_iter, warmup_iter)
            return
        super(DiffIRS2Model, self).update_learning_rate(current_iter, warmup_iter)
        lr = train_opt["lr_sr"] * train_opt["gamma_sr"] ** (current_iter // train_opt["lr_decay_sr"])
        for group in self.optimizer_g.param_groups:
            group["lr"] = lr
