"""What every diffir training model adds to basicsr's SRModel.

* Device-agnostic: CPU (``num_gpu: 0``), one GPU, DDP on NCCL or gloo (no hard-coded ``.cuda()``).
* One optimisation step per iteration, written once: optional gradient accumulation over
  ``train.grad_accum_steps`` micro-batches of the loaded batch, bf16 autocast (``train.amp: bf16``),
  gradient clipping (``train.grad_clip``), and a non-finite loss guard: the step is skipped and
  logged; after ``train.max_nonfinite_steps`` in a row (default 5) training stops with a clear error
  naming the last good checkpoint. Subclasses only say what the loss is (:meth:`compute_losses`).
* Checkpoints and training states are written atomically (temp file + rename), and a training state
  holds everything needed to continue exactly: networks (incl. EMA and discriminator), optimisers,
  schedulers and RNG states.
* Validation pads the LQ image to the network's size multiple, crops the output back and samples
  stage two with a fixed seed, so validation numbers are reproducible.
* Optional DiffLoss (``train.diffloss_opt``) through :class:`DiffLossMixin`.
* Optional ``torch.compile`` of the network (top-level ``compile``, see :mod:`diffir.utils.compile`).
"""
from __future__ import annotations

import math
import os
import random
from collections import OrderedDict
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from basicsr.models import lr_scheduler as basicsr_lr_scheduler
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from torch.nn.parallel import DistributedDataParallel

from ..training_state import write_training_state
from ..utils.atomic import atomic_torch_save
from ..utils.compile import compile_network
from ..utils.padding import crop_to, pad_to_multiple
from .diffloss_mixin import DiffLossMixin
from .lr_scheduler import CosineAnnealingRestartCyclicLR


# what train.optim_*.type and train.scheduler.type can name (diffir.option_schema checks options against them)
OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
SCHEDULERS = {
    "MultiStepLR": basicsr_lr_scheduler.MultiStepRestartLR,
    "MultiStepRestartLR": basicsr_lr_scheduler.MultiStepRestartLR,
    "CosineAnnealingRestartLR": basicsr_lr_scheduler.CosineAnnealingRestartLR,
    "CosineAnnealingRestartCyclicLR": CosineAnnealingRestartCyclicLR,
}


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses for too many iterations in a row."""


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"].cpu())
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def complete_network_scale(opt: dict) -> None:
    """Give DiffIR network blocks without ``scale`` the run's top-level ``scale`` when it is above 1.

    The official x4 SR files leave ``scale`` out of ``network_g`` (their SR class defaults to 4), while
    the deblurring files leave it out because that network has none; the top-level ``scale`` (4 vs 1)
    tells them apart. Blocks with ``scale``, ``task`` or 4 input channels (inpainting) are left alone.
    """
    for key in ("network_g", "network_S1"):
        block = opt.get(key)
        if (block and block.get("type") in ("DiffIRS1", "DiffIRS2") and "scale" not in block
                and "task" not in block and block.get("inp_channels", 3) != 4 and opt.get("scale", 1) > 1):
            block["scale"] = opt["scale"]


def require_vgg_weights() -> None:
    """basicsr's perceptual loss downloads VGG19 weights when its local copy is missing; say which file
    to get instead of failing inside a download on an offline machine."""
    from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH

    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg19-dcbb9e9d.pth")
    if not (os.path.isfile(VGG_PRETRAIN_PATH) or os.path.isfile(cached)):
        raise FileNotFoundError(
            f"train.perceptual_opt needs the ImageNet VGG19 weights: put vgg19-dcbb9e9d.pth "
            f"(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) at {VGG_PRETRAIN_PATH} (relative to the "
            f"run folder) or at {cached}")


class DiffIRBaseModel(DiffLossMixin, SRModel):
    """SRModel with the shared training machinery described in the module docstring."""

    # tensors of a training batch that are split into micro-batches (when present)
    batch_keys = ("lq", "gt", "gt_usm")

    def __init__(self, opt):
        complete_network_scale(opt)
        super().__init__(opt)
        compile_network(self.get_bare_model(self.net_g), opt.get("compile"))

    def feed_data(self, data):
        """Move the batch's ``batch_keys`` tensors to the device (``lq`` is required) and drop those the
        batch lacks, so that nothing of an earlier batch (a training GT in validation) is used."""
        for key in self.batch_keys:
            if key in data or key == "lq":
                setattr(self, key, data[key].to(self.device))
            elif hasattr(self, key):
                delattr(self, key)

    # ------------------------------------------------------------------ devices and setup
    def model_to_device(self, net):
        if self.opt["dist"] and self.device.type == "cpu":  # basicsr's version assumes a CUDA device
            return DistributedDataParallel(net.to(self.device),
                                           find_unused_parameters=self.opt.get("find_unused_parameters", False))
        return super().model_to_device(net)

    def init_training_settings(self):
        train_opt = self.opt["train"]
        self.grad_accum_steps = int(train_opt.get("grad_accum_steps", 1))
        self.grad_clip = train_opt.get("grad_clip")
        self.max_nonfinite_steps = int(train_opt.get("max_nonfinite_steps", 5))
        self.nonfinite_in_a_row = 0
        amp = train_opt.get("amp")
        if amp not in (None, False, "bf16"):
            raise ValueError(f"train.amp must be 'bf16' or absent, got {amp!r}")
        self.amp_dtype = torch.bfloat16 if amp else None
        if train_opt.get("perceptual_opt"):
            require_vgg_weights()
        super().init_training_settings()
        self.init_diffloss(train_opt)

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        if optim_type not in OPTIMIZERS:
            raise ValueError(f"optimizer type {optim_type!r} is not supported; use one of {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optim_type](params, lr, **kwargs)

    def setup_optimizers(self):
        # basicsr's version pops "type" from train.optim_g in place; give it a copy, since stage two
        # reads those options again for its encoder optimiser
        train_opt = self.opt["train"]
        optim_g = train_opt["optim_g"]
        train_opt["optim_g"] = dict(optim_g)
        try:
            super().setup_optimizers()
        finally:
            train_opt["optim_g"] = optim_g

    def setup_schedulers(self):
        scheduler_opt = dict(self.opt["train"]["scheduler"])
        scheduler_type = scheduler_opt.pop("type")
        if scheduler_type not in SCHEDULERS:
            raise ValueError(f"train.scheduler.type {scheduler_type!r} is not supported; "
                             f"use one of {sorted(SCHEDULERS)}")
        self.schedulers = [SCHEDULERS[scheduler_type](optimizer, **scheduler_opt) for optimizer in self.optimizers]

    # ------------------------------------------------------------------ one optimisation step
    def compute_losses(self, batch: dict, current_iter: int):
        """Return ``(total_loss, loss_dict, output)`` for one (micro-)batch. Implemented by subclasses."""
        raise NotImplementedError

    def autocast(self):
        """bf16 autocast when ``train.amp`` asks for it, else a context that does nothing."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def optimizer_for(self, current_iter: int):
        return self.optimizer_g

    def _micro_batches(self):
        tensors = {k: getattr(self, k) for k in self.batch_keys if hasattr(self, k)}
        batch_size = next(iter(tensors.values())).shape[0]
        chunks = {k: v.chunk(min(self.grad_accum_steps, batch_size)) for k, v in tensors.items()}
        return [dict(zip(chunks, parts)) for parts in zip(*chunks.values())]

    def gt_or_usm(self, batch: dict, option: str):
        """The batch's USM-sharpened GT when ``option`` is on and the batch has one (real-world SR V2), else its GT."""
        return batch["gt_usm"] if self.opt.get(option) and "gt_usm" in batch else batch["gt"]

    def l1_target(self, batch: dict):
        """The GT the pixel loss (and CPEN_S1) see."""
        return self.gt_or_usm(batch, "l1_gt_usm")

    def add_perceptual_loss(self, l_total, output, gt, loss_dict):
        """``l_total`` plus basicsr's perceptual and style terms (those it computes), logged in ``loss_dict``."""
        l_percep, l_style = self.cri_perceptual(output, gt)
        for name, value in (("l_percep", l_percep), ("l_style", l_style)):
            if value is not None:
                loss_dict[name] = value
                l_total = l_total + value
        return l_total

    def image_losses(self, output, batch: dict, loss_dict):
        """Pixel + perceptual + DiffLoss terms on a restored batch (each optional); returns their sum."""
        gt = self.l1_target(batch)
        l_total = 0
        if self.cri_pix:
            loss_dict["l_pix"] = self.cri_pix(output, gt)
            l_total = l_total + loss_dict["l_pix"]
        if self.cri_perceptual:
            l_total = self.add_perceptual_loss(l_total, output, self.gt_or_usm(batch, "percep_gt_usm"), loss_dict)
        return l_total + self.diffloss_terms(output, gt, loss_dict)

    def _all_ranks_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().float().reshape(1)
        if self.opt["dist"]:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def generator_step(self, current_iter: int) -> bool:
        """Forward, backward and optimiser step over the micro-batches; False if the step was skipped."""
        optimizer = self.optimizer_for(current_iter)
        optimizer.zero_grad(set_to_none=True)
        micro_batches = self._micro_batches()
        outputs, loss_sums = [], OrderedDict()
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = nullcontext() if last or not isinstance(self.net_g, DistributedDataParallel) else self.net_g.no_sync()
            with sync:
                with self.autocast():
                    l_total, loss_dict, output = self.compute_losses(batch, current_iter)
                if not self._all_ranks_finite(l_total):
                    return self._skip_nonfinite(current_iter, loss_dict, optimizer)
                (l_total / len(micro_batches)).backward()
            outputs.append(output.detach() if output is not None else None)
            for k, v in loss_dict.items():
                loss_sums[k] = loss_sums.get(k, 0) + v.detach() / len(micro_batches)
        if self.grad_clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, float(self.grad_clip))
        optimizer.step()
        self.nonfinite_in_a_row = 0
        self.output = torch.cat(outputs) if outputs[0] is not None else None  # None: no image this step
        self.loss_dict = loss_sums
        return True

    def _skip_nonfinite(self, current_iter, loss_dict, optimizer) -> bool:
        optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
        logger = get_root_logger()
        logger.warning(f"iter {current_iter}: non-finite loss ({values}); step skipped "
                       f"({self.nonfinite_in_a_row}/{self.max_nonfinite_steps} in a row)")
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            last = getattr(self, "last_saved_state", None) or "none saved yet"
            raise NonFiniteLossError(f"{self.nonfinite_in_a_row} non-finite losses in a row up to iter {current_iter}; "
                                     f"stopping. Last good training state: {last}. Lower the learning rate, set "
                                     f"train.grad_clip, or check the data, then resume from that state.")
        self.loss_dict = OrderedDict()
        return False

    def optimize_parameters(self, current_iter):
        stepped = self.generator_step(current_iter)
        self.finish_iteration(stepped, self.loss_dict)

    def finish_iteration(self, stepped: bool, log: dict) -> None:
        """Update the EMA after a generator step and keep the iteration's log, averaged over ranks."""
        if stepped and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.log_dict = self.reduce_loss_dict(log) if log else OrderedDict()

    # ------------------------------------------------------------------ validation
    def size_multiple(self) -> int:
        """What validation pads the LQ image to: the least common multiple of the network's
        ``size_multiple`` (where it has one) and ``val.window_size``."""
        multiple = getattr(self.get_bare_model(self.net_g), "size_multiple", 1)
        return math.lcm(int(multiple), int(self.opt.get("val", {}).get("window_size") or 1))

    def run_network_eval(self, net, lq):
        """The eval-mode forward used by validation; stage-one models override it to pass the GT."""
        return net(lq)

    def test(self):
        net = self.net_g_ema if hasattr(self, "net_g_ema") else self.net_g
        was_training = net.training
        net.eval()
        lq, size = pad_to_multiple(self.lq, self.size_multiple())
        with torch.no_grad():
            output = self.run_network_eval(net, lq)
        # the scale is read off the output, so any architecture's upscaling works
        self.output = crop_to(output, size, output.shape[-1] // lq.shape[-1])
        net.train(was_training)

    # ------------------------------------------------------------------ saving and resuming
    def networks_to_save(self) -> dict:
        nets = {"net_g": self.net_g}
        if hasattr(self, "net_g_ema"):
            nets["net_g_ema"] = self.net_g_ema
        return nets

    @master_only
    def save_network(self, net, net_label, current_iter, param_key="params"):
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {key: {k: v.cpu() for k, v in self.get_bare_model(n).state_dict().items()}
                     for n, key in zip(nets, keys)}
        name = "latest" if current_iter == -1 else current_iter
        atomic_torch_save(save_dict, os.path.join(self.opt["path"]["models"], f"{net_label}_{name}.pth"))

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {
            "epoch": epoch,
            "iter": current_iter,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "networks": {name: self.get_bare_model(n).state_dict() for name, n in self.networks_to_save().items()},
            "rng": rng_states(),
        }
        path = os.path.join(self.opt["path"]["training_states"], f"{current_iter}.state")
        write_training_state(state, path)  # loadable with weights_only=True
        self.last_saved_state = path

    def resume_training(self, resume_state):
        nets = self.networks_to_save()
        saved = resume_state.get("networks", {})
        missing = [name for name in nets if name not in saved]
        if missing:
            raise ValueError(f"training state has no weights for {missing}; it was not written by diffir "
                             f"(states from other trainers cannot be resumed exactly)")
        for name, net in nets.items():
            self.get_bare_model(net).load_state_dict(saved[name])
        if len(resume_state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"training state has {len(resume_state['optimizers'])} optimisers, this model "
                             f"{len(self.optimizers)}: the options changed since it was saved")
        super().resume_training(resume_state)
        set_rng_states(resume_state["rng"])
