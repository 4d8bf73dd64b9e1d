"""Adversarial training for the DiffIR models (GAN-based and real-world SR)."""
from collections import OrderedDict

from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from .diffir_s1_model import DiffIRS1Model
from .diffir_s2_model import DiffIRS2Model


class AdversarialMixin:
    """``gan_opt`` + a discriminator ``network_d`` (basicsr's UNetDiscriminatorSN in the official
    configs) on top of a DiffIR model's own losses. G and D are updated every ``net_d_iters``
    iterations after ``net_d_init_iters``; ``gan_gt_usm`` selects the real images D sees. The
    discriminator is saved as ``net_d_<iter>.pth`` and in the training state."""

    def init_training_settings(self):
        train_opt = self.opt["train"]
        if "network_d" not in self.opt or not train_opt.get("gan_opt"):
            raise ValueError(f"{type(self).__name__} needs network_d and train.gan_opt")
        self.net_d = self.model_to_device(build_network(self.opt["network_d"]))
        load_path = self.opt["path"].get("pretrain_network_d")
        if load_path:
            self.load_network(self.net_d, load_path, self.opt["path"].get("strict_load_d", True),
                              self.opt["path"].get("param_key_d", "params"))
        self.net_d.train()
        self.cri_gan = build_loss(train_opt["gan_opt"]).to(self.device)
        self.net_d_iters = train_opt.get("net_d_iters", 1)
        self.net_d_init_iters = train_opt.get("net_d_init_iters", 0)
        super().init_training_settings()

    def setup_optimizers(self):
        super().setup_optimizers()
        optim_opt = dict(self.opt["train"]["optim_d"])
        self.optimizer_d = self.get_optimizer(optim_opt.pop("type", "Adam"), self.net_d.parameters(), **optim_opt)
        self.optimizers.append(self.optimizer_d)

    def compute_losses(self, batch, current_iter):
        l_total, loss_dict, output = super().compute_losses(batch, current_iter)
        if output is not None:
            loss_dict["l_g_gan"] = self.cri_gan(self.net_d(output), True, is_disc=False)
            l_total = l_total + loss_dict["l_g_gan"]
        return l_total, loss_dict, output

    def optimize_parameters(self, current_iter):
        update_g = current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters
        self.net_d.requires_grad_(False)
        stepped = self.generator_step(current_iter) if update_g else False
        log = OrderedDict(self.loss_dict) if stepped else OrderedDict()
        if stepped and getattr(self, "output", None) is not None:
            log.update(self.discriminator_step())
        if stepped and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.log_dict = self.reduce_loss_dict(log) if log else OrderedDict()

    def discriminator_step(self):
        self.net_d.requires_grad_(True)
        self.optimizer_d.zero_grad(set_to_none=True)
        real = self.gt_usm if self.opt.get("gan_gt_usm") and hasattr(self, "gt_usm") else self.gt
        real_pred = self.net_d(real)
        l_d_real = self.cri_gan(real_pred, True, is_disc=True)
        l_d_real.backward()
        fake_pred = self.net_d(self.output.detach())
        l_d_fake = self.cri_gan(fake_pred, False, is_disc=True)
        l_d_fake.backward()
        self.optimizer_d.step()
        return OrderedDict(l_d_real=l_d_real.detach(), l_d_fake=l_d_fake.detach(),
                           out_d_real=real_pred.detach().mean(), out_d_fake=fake_pred.detach().mean())

    def networks_to_save(self):
        return {**super().networks_to_save(), "net_d": self.net_d}

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        self.save_network(self.net_d, "net_d", current_iter)


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
