"""Stage two: learn to estimate the stage-one IPR from the LQ image alone."""
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import MODEL_REGISTRY

from .diffir_s1_model import DiffIRS1Model


@MODEL_REGISTRY.register()
class DiffIRS2Model(DiffIRS1Model):
    """DiffIRS2 trained against a frozen DiffIRS1 (``network_S1``, ``path.pretrain_network_S1``).

    * The target IPR comes from the frozen stage-one CPEN, ``net_g_S1.estimate_ipr(lq, gt)``, computed without
      gradients (the official code keeps autograd on for it, which only costs memory).
    * The DIRformer starts from the stage-one weights: ``path.pretrain_network_g`` = the S1 file with
      ``strict_load_g: false`` loads its ``G.*`` keys, as the official configs do (logged in one line).
    * Encoder phase (``current_iter < train.encoder_iter``): only CPEN_S2 + denoiser run and train, on
      the IPR loss, with their own optimiser (``optimizer_e``). Joint phase: everything trains on the
      restoration loss + IPR loss with ``optimizer_g``. The two optimisers keep separate Adam moments,
      as in the official code.
    * Optional manual LR override (official RealSR / deblurring S2): when ``train.lr_encoder`` is set,
      ``lr_e = lr_encoder * gamma_encoder ** (iter // lr_decay_encoder)`` in the encoder phase and
      ``lr_g = lr_sr * gamma_sr ** ((iter - encoder_iter) // lr_decay_sr)`` afterwards; it replaces the
      scheduler's value for that optimiser.
    """

    def __init__(self, opt):
        self.encoder_iter = int(opt.get("train", {}).get("encoder_iter", 0))
        if opt.get("dist") and self.encoder_iter > 0:
            opt["find_unused_parameters"] = True  # the encoder phase leaves the DIRformer unused
        if opt.get("is_train") and not opt["train"].get("kd_opt"):
            raise ValueError("stage two needs train.kd_opt (type: KDLoss) for the IPR loss")
        self.net_g_S1 = None
        super().__init__(opt)

    def build_frozen_networks(self):
        """The frozen stage-one network ``net_g_S1`` whose CPEN gives the target IPR."""
        if "network_S1" not in self.opt:
            raise ValueError("stage two needs network_S1 (the stage-one network options)")
        load_path = self.opt["path"].get("pretrain_network_S1")
        if not load_path:
            raise ValueError("stage two needs path.pretrain_network_S1: the trained stage-one checkpoint")
        self.net_g_S1 = build_network(self.opt["network_S1"]).to(self.device)
        self.load_network(self.net_g_S1, load_path, True, self.opt["path"].get("param_key_S1", "params_ema"))
        self.net_g_S1.eval().requires_grad_(False)

    def setup_generator_optimizers(self):
        super().setup_generator_optimizers()
        optim_opt = dict(self.opt["train"]["optim_g"])
        estimator = [p for name, p in self.get_bare_model(self.net_g).named_parameters()
                     if name.startswith(("condition.", "denoise."))]
        self.optimizer_e = self.get_optimizer(optim_opt.pop("type"), estimator, **optim_opt)
        self.optimizers.append(self.optimizer_e)

    def in_encoder_phase(self, current_iter):
        return current_iter < self.encoder_iter

    def optimizer_for(self, current_iter):
        return self.optimizer_e if self.in_encoder_phase(current_iter) else self.optimizer_g

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        super().update_learning_rate(current_iter, warmup_iter)
        manual = self.manual_learning_rate(current_iter)
        if manual is not None:
            optimizer, lr = manual
            for group in optimizer.param_groups:
                group["lr"] = lr

    def manual_learning_rate(self, current_iter):
        """``(optimizer, lr)`` replacing the scheduler's value this iteration, or None (see the class docstring)."""
        train_opt = self.opt["train"]
        if train_opt.get("lr_encoder") is None:
            return None
        if self.in_encoder_phase(current_iter):
            return self.optimizer_e, train_opt["lr_encoder"] * train_opt["gamma_encoder"] ** (
                current_iter // train_opt["lr_decay_encoder"])
        steps = (current_iter - self.encoder_iter) // train_opt["lr_decay_sr"]
        return self.optimizer_g, train_opt["lr_sr"] * train_opt["gamma_sr"] ** steps

    def target_ipr(self, lq, gt):
        with torch.no_grad():
            return self.net_g_S1.estimate_ipr(lq, gt)

    def forward_train(self, batch, current_iter):
        ipr_s1 = self.target_ipr(batch["lq"], self.l1_target(batch))
        if self.in_encoder_phase(current_iter):  # CPEN_S2 + denoiser only, on the IPR loss
            ipr_s2, _ = self.net_g(batch["lq"], ipr_s1, ipr_only=True)
            return None, (ipr_s2, ipr_s1)
        output, iprs = self.net_g(batch["lq"], ipr_s1)
        return output, (iprs[-1], ipr_s1)

    def run_network_eval(self, net, lq):
        generator = torch.Generator(device=lq.device).manual_seed(int(self.opt.get("val", {}).get("seed", 0)))
        return net(lq, generator=generator)
