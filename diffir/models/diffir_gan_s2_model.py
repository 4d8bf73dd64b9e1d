"""The GAN stage of DiffIR (GAN-based and real-world SR): stage two + a discriminator."""
from basicsr.utils.registry import MODEL_REGISTRY

from .adversarial import AdversarialTraining
from .diffir_s2_model import DiffIRS2Model


@MODEL_REGISTRY.register()
class DiffIRGANS2Model(DiffIRS2Model):
    """Stage two + perceptual + adversarial losses: the official GAN stage (``DiffIRGANS2Model``), with
    ``gan_opt`` and a discriminator ``network_d`` (basicsr's UNetDiscriminatorSN in the official configs);
    see :class:`~diffir.models.adversarial.AdversarialTraining`.

    The real-world SR GAN configs set only ``lr_sr``, ``gamma_sr``, ``lr_decay_sr``: the G rate is
    then ``lr_sr * gamma_sr ** (iter // lr_decay_sr)`` (official), replacing the scheduler's value.
    The encoder phase of DiffIRS2Model still applies when ``encoder_iter`` > 0 (the official GAN
    configs start from a trained stage-two model and use none)."""

    adversarial_training = AdversarialTraining

    def manual_learning_rate(self, current_iter):
        train_opt = self.opt["train"]
        if train_opt.get("lr_sr") is not None and train_opt.get("lr_encoder") is None:
            steps = current_iter // train_opt["lr_decay_sr"]
            return self.optimizer_g, train_opt["lr_sr"] * train_opt["gamma_sr"] ** steps
        return super().manual_learning_rate(current_iter)
