"""The discriminator every adversarially trained diffir model shares: built from ``network_d``,
optionally initialised from ``path.pretrain_network_d``, optimised by ``optimizer_d`` (``optim_d``)
and saved as ``net_d_<iter>.pth`` and in the training state."""
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss


class DiscriminatorMixin:
    """Subclasses define ``discriminator_backward()`` (D's losses, backpropagated; returns their log)
    and may gate the generator with ``generator_due(current_iter)``; the discriminator steps on every
    iteration."""

    clip_discriminator_grad = False  # whether train.grad_clip also clips D's gradient

    def build_discriminator(self) -> None:
        """Build ``net_d`` and ``cri_gan``; call before the base ``init_training_settings``."""
        train_opt = self.opt["train"]
        if "network_d" not in self.opt or not train_opt.get("gan_opt"):
            raise ValueError(f"{type(self).__name__} needs network_d and train.gan_opt")
        self.net_d = self.model_to_device(build_network(self.opt["network_d"]))
        load_path = self.opt["path"].get("pretrain_network_d")
        if load_path:
            self.load_network(self.net_d, load_path, self.opt["path"].get("strict_load_d", True),
                              self.opt["path"].get("param_key_d", "params"))
        self.net_d.train()
        self.cri_gan = build_loss(dict(train_opt["gan_opt"])).to(self.device)

    def generator_due(self, current_iter: int) -> bool:
        return True

    def optimize_parameters(self, current_iter):
        """A generator step with D frozen (when due), then a discriminator step on the generator's
        output. D steps every iteration, as in basicsr's ESRGAN: without a generator step it sees the
        output of a gradient-free generator forward, and only its own losses are logged."""
        self.net_d.requires_grad_(False)
        self.output = None
        if self.generator_due(current_iter):
            stepped = self.generator_step(current_iter)  # output stays None if skipped (non-finite loss)
            log = OrderedDict(self.loss_dict)
        else:
            stepped = False
            self.output = self.generator_output(current_iter)
            log = OrderedDict()
        if self.output is not None:  # also None in stage two's encoder phase
            log.update(self.discriminator_step())
        self.finish_iteration(stepped, log)

    def discriminator_step(self):
        """One optimiser step of D on the losses of ``discriminator_backward()``; returns their log."""
        self.net_d.requires_grad_(True)
        self.optimizer_d.zero_grad(set_to_none=True)
        log = self.discriminator_backward()
        if self.clip_discriminator_grad and self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net_d.parameters(), float(self.grad_clip))
        self.optimizer_d.step()
        return log

    def generator_output(self, current_iter):
        """The generator's training forward over the micro-batches, without gradients. Its losses are
        computed and dropped: D-only iterations are few (none in the official recipes, which set
        net_d_iters 1 and net_d_init_iters 0)."""
        with torch.no_grad(), self.autocast():
            outputs = [self.compute_losses(batch, current_iter)[2] for batch in self._micro_batches()]
        return torch.cat(outputs) if outputs[0] is not None else None

    def setup_optimizers(self):
        super().setup_optimizers()
        optim_opt = dict(self.opt["train"]["optim_d"])
        self.optimizer_d = self.get_optimizer(optim_opt.pop("type", "Adam"), self.net_d.parameters(), **optim_opt)
        self.optimizers.append(self.optimizer_d)

    def networks_to_save(self):
        return {**super().networks_to_save(), "net_d": self.net_d}

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        self.save_network(self.net_d, "net_d", current_iter)
