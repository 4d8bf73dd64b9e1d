"""The training model every diffir model type builds on, and its one training step.

:meth:`DiffIRBaseModel.optimize_parameters` is the training iteration, read top to bottom:
forward -> losses (pixel, perceptual, ResNetPL, DiffLoss, adversarial, stage-two IPR loss) ->
backward / optimiser step (over ``train.grad_accum_steps`` micro-batches) -> discriminator step ->
EMA. The optional parts are plain objects the model owns, built from the options:

* ``self.degradation``: the Real-ESRGAN on-the-fly degradation (``high_order_degradation: true``),
  applied to a training batch when it is fed (:meth:`feed_data`), as basicsr's RealESRGANModel does;
* ``self.cri_diffloss``: DiffLoss (``train.diffloss_opt``), frozen, outside ``net_g``;
* ``self.adversarial``: discriminator, GAN loss and D optimiser (:mod:`diffir.models.adversarial`),
  for model types that name an ``adversarial_training`` class.

Model types only say how their network runs in training (:meth:`forward_train`). Around the step:

* Device-agnostic: CPU (``num_gpu: 0``), one GPU, DDP on NCCL or gloo (no hard-coded ``.cuda()``).
* bf16 autocast (``train.amp: bf16``), gradient clipping (``train.grad_clip``) and a non-finite loss
  guard: the step is skipped and logged; after ``train.max_nonfinite_steps`` in a row (default 5)
  training stops with a clear error naming the last good checkpoint.
* Weights are read with ``torch.load(weights_only=True)``; a partial load (``strict_load_*: false``,
  e.g. stage two starting from stage one) is reported in one line saying what was loaded.
* Checkpoints and training states are written atomically (temp file + rename), and a training state
  holds everything needed to continue exactly: networks (incl. EMA and discriminator), optimisers,
  schedulers and RNG states.
* Validation pads the LQ image to the network's size multiple, crops the output back and samples
  stage two with a fixed seed, so validation numbers are reproducible.
* Optional ``torch.compile`` of the network (top-level ``compile``, see :mod:`diffir.utils.compile`).
"""
from __future__ import annotations

import math
import os
import random
from collections import OrderedDict
from contextlib import nullcontext
from copy import deepcopy

import numpy as np
import torch
import torch.distributed as dist
from basicsr.archs.vgg_arch import VGG_PRETRAIN_PATH
from basicsr.losses import build_loss
from basicsr.models import lr_scheduler as basicsr_lr_scheduler
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import CheckpointError, read_state_dict
from ..data.degradation import RealESRGANDegradation
from ..training_state import write_training_state
from ..utils.compile import compile_network
from ..utils.padding import crop_to, pad_to_multiple
from ..utils.safetensors_io import save_network_weights
from .lr_scheduler import CosineAnnealingRestartCyclicLR

# what the top-level state-dict prefixes of the DiffIR networks are, for the partial-load log line
PART_NAMES = {"G": "DIRformer", "E": "CPEN_S1", "condition": "CPEN_S2", "denoise": "denoiser",
              "diffusion": "noise schedule"}


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
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg19-dcbb9e9d.pth")
    if not (os.path.isfile(VGG_PRETRAIN_PATH) or os.path.isfile(cached)):
        raise FileNotFoundError(
            f"train.perceptual_opt needs the ImageNet VGG19 weights: put vgg19-dcbb9e9d.pth "
            f"(https://download.pytorch.org/models/vgg19-dcbb9e9d.pth) at {VGG_PRETRAIN_PATH} (relative to the "
            f"run folder) or at {cached}")


def build_diffloss(train_opt: dict, device) -> nn.Module | None:
    """DiffLoss from ``train.diffloss_opt`` (None when absent): on ``device``, frozen, in eval mode.
    It lives outside ``net_g``, so the prior never reaches a checkpoint or an optimiser."""
    diffloss_opt = train_opt.get("diffloss_opt")
    if not diffloss_opt:
        return None
    diffloss_opt = deepcopy(dict(diffloss_opt))  # build_loss pops 'type'; keep the options intact
    diffloss_opt.setdefault("type", "DiffLoss")
    loss = build_loss(diffloss_opt).to(device).requires_grad_(False).eval()
    get_root_logger().info(f"DiffLoss on: {loss.describe()}")
    return loss


def describe_parts(keys) -> str:
    """'DIRformer (G.*), CPEN_S2 (condition.*)' for state-dict keys, by top-level prefix."""
    prefixes = sorted({k.split(".")[0] for k in keys})
    return ", ".join(f"{PART_NAMES[p]} ({p}.*)" if p in PART_NAMES else f"{p}.*" for p in prefixes)


class DiffIRBaseModel(SRModel):
    """SRModel with the one training step and the shared machinery described in the module docstring."""

    # tensors of a training batch that are split into micro-batches (when present)
    batch_keys = ("lq", "gt", "gt_usm")
    # the adversarial part's class (see diffir.models.adversarial); None: no discriminator
    adversarial_training = None

    def __init__(self, opt):
        complete_network_scale(opt)
        super().__init__(opt)
        compile_network(self.get_bare_model(self.net_g), opt.get("compile"), training=bool(opt.get("is_train")))

    def feed_data(self, data):
        """Move the batch's ``batch_keys`` tensors to the device (``lq`` is required) and drop those the
        batch lacks, so that nothing of an earlier batch (a training GT in validation) is used. A training
        batch of GT + blur kernels (RealESRGANDataset) is degraded into (lq, gt, gt_usm) here when the
        model has the synthetic degradation; validation and other datasets give their LQ images."""
        if self.is_train and getattr(self, "degradation", None) is not None and "kernel1" in data:
            self.lq, self.gt, self.gt_usm = self.degradation(data)
            return
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

    def load_network(self, net, load_path, strict=True, param_key="params"):
        """basicsr's ``load_network``, reading with ``weights_only=True``. A strict load names the file
        when it does not fit; a partial one (``strict_load_*: false``) loads the tensors that fit and
        logs one line saying what came from the file and what starts fresh."""
        bare = self.get_bare_model(net)
        state, source = read_state_dict(load_path, param_key or "params")
        label = next((name for name in ("net_g", "net_g_ema", "net_g_S1") if getattr(self, name, None) is net),
                     type(bare).__name__)
        logger = get_root_logger()
        if strict:
            try:
                bare.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise CheckpointError(f"{load_path} ({source}) does not fit {label} ({type(bare).__name__}): "
                                      f"{err}") from err
            logger.info(f"{label}: loaded {type(bare).__name__} from {load_path} ({source})")
            return
        own = bare.state_dict()
        fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        resized = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
        if not fits:
            raise CheckpointError(f"{load_path} ({source}) has no tensor that fits {label} ({type(bare).__name__}); "
                                  f"its keys start with {describe_parts(state)}")
        bare.load_state_dict(fits, strict=False)
        fresh = [k for k in own if k not in fits]
        unused = [k for k in state if k not in own]
        line = f"{label}: loaded {len(fits)} {describe_parts(fits)} tensors from {load_path} ({source})"
        if fresh:
            line += f"; {describe_parts(fresh)} start fresh"
        if unused:
            line += f"; not used from the file: {describe_parts(unused)}"
        logger.info(line)
        if resized:
            logger.warning(f"{label}: {len(resized)} tensors of {load_path} have another shape than the network's "
                           f"and start fresh, e.g. {resized[:3]}")

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
        self.degradation = (RealESRGANDegradation(self.opt, self.device)
                            if self.opt.get("high_order_degradation", False) else None)
        self.adversarial = self.adversarial_training(self) if self.adversarial_training else None
        self.cri_resnet_pl = build_loss(dict(train_opt["resnet_pl_opt"])).to(self.device) \
            if train_opt.get("resnet_pl_opt") else None
        self.build_frozen_networks()
        super().init_training_settings()  # basicsr: EMA copy, pixel + perceptual losses, optimisers, schedulers
        self.cri_kd = build_loss(train_opt["kd_opt"]).to(self.device) if train_opt.get("kd_opt") else None
        self.cri_diffloss = build_diffloss(train_opt, self.device)

    def build_frozen_networks(self) -> None:
        """Networks that training uses but does not train (stage two: the stage-one network)."""

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        if optim_type not in OPTIMIZERS:
            raise ValueError(f"optimizer type {optim_type!r} is not supported; use one of {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optim_type](params, lr, **kwargs)

    def setup_optimizers(self):
        """The generator's optimisers (:meth:`setup_generator_optimizers`), then the discriminator's."""
        self.setup_generator_optimizers()
        if self.adversarial is not None:
            self.optimizer_d = self.adversarial.build_optimizer(self.get_optimizer)
            self.optimizers.append(self.optimizer_d)

    def setup_generator_optimizers(self):
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

    # ------------------------------------------------------------------ the training step
    def optimize_parameters(self, current_iter):
        """One training iteration on the fed batch (degraded in :meth:`feed_data` when configured).

        1. generator step (:meth:`generator_step`): forward -> losses -> backward -> optimiser step, with
           the discriminator frozen. With a discriminator, G steps every ``net_d_iters`` iterations
           after ``net_d_init_iters``; until then only a gradient-free forward gives D its fakes.
        2. discriminator step on the generator's output (every iteration, as basicsr's ESRGAN).
        3. EMA update after a generator step; the log is averaged over ranks.
        """
        self.output = None
        if self.adversarial is None or self.adversarial.generator_due(current_iter):
            stepped = self.generator_step(current_iter)  # output stays None if skipped (non-finite loss)
            log = OrderedDict(self.loss_dict)
        else:
            stepped, log = False, OrderedDict()
            self.output = self.generator_output(current_iter)
        if self.adversarial is not None and self.output is not None:  # None in stage two's encoder phase
            log.update(self.adversarial.discriminator_step(self.full_batch(), self.output))
        if stepped and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self.log_dict = self.reduce_loss_dict(log) if log else OrderedDict()

    def forward_train(self, batch: dict, current_iter: int):
        """The network's training forward on a (micro-)batch: ``(restored image or None, IPR pair or
        None)``, the pair being (estimated IPR, target IPR) for stage two's IPR loss. Per model type."""
        raise NotImplementedError

    def compute_losses(self, batch: dict, current_iter: int):
        """Forward and every loss for one (micro-)batch: ``(total_loss, loss_dict, output)``."""
        output, ipr_pair = self.forward_train(batch, current_iter)
        loss_dict = OrderedDict()
        l_total = 0
        if output is not None:
            gt = self.l1_target(batch)
            if self.cri_pix:
                mask = batch.get("mask")  # inpainting: MaskedL1Loss weighs known and missing pixels
                loss_dict["l_pix"] = self.cri_pix(output, gt) if mask is None else self.cri_pix(output, gt, mask)
                l_total = l_total + loss_dict["l_pix"]
            if self.cri_perceptual:
                l_percep, l_style = self.cri_perceptual(output, self.gt_or_usm(batch, "percep_gt_usm"))
                for name, value in (("l_percep", l_percep), ("l_style", l_style)):
                    if value is not None:
                        loss_dict[name] = value
                        l_total = l_total + value
            if self.cri_resnet_pl:
                loss_dict["l_g_resnet_pl"] = self.cri_resnet_pl(output, gt)
                l_total = l_total + loss_dict["l_g_resnet_pl"]
            if self.cri_diffloss is not None:
                terms = self.cri_diffloss.terms(output, gt)
                loss_dict.update(terms)
                l_total = l_total + terms["l_nat"] + terms["l_sem"]
            if self.adversarial is not None:
                l_total = l_total + self.adversarial.generator_loss(output, batch, loss_dict)
        if ipr_pair is not None:
            loss_dict["l_kd"], loss_dict["l_ipr"] = self.cri_kd(*ipr_pair)
            l_total = l_total + loss_dict["l_ipr"]
        return l_total, loss_dict, output

    def generator_step(self, current_iter: int) -> bool:
        """Forward, losses, backward over the micro-batches, then one optimiser step; False if skipped."""
        optimizer = self.optimizer_for(current_iter)
        optimizer.zero_grad(set_to_none=True)
        micro_batches = self._micro_batches()
        outputs, loss_sums = [], OrderedDict()
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = (nullcontext() if last or not isinstance(self.net_g, DistributedDataParallel)
                    else self.net_g.no_sync())
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

    def generator_output(self, current_iter):
        """The generator's training forward over the micro-batches, without gradients (discriminator-only
        iterations). Its losses are computed and dropped: such iterations are few (none in the official
        recipes, which set net_d_iters 1 and net_d_init_iters 0)."""
        with torch.no_grad(), self.autocast():
            outputs = [self.compute_losses(batch, current_iter)[2] for batch in self._micro_batches()]
        return torch.cat(outputs) if outputs[0] is not None else None

    def autocast(self):
        """bf16 autocast when ``train.amp`` asks for it, else a context that does nothing."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def optimizer_for(self, current_iter: int):
        return self.optimizer_g

    def full_batch(self) -> dict:
        """The fed batch's tensors (those of ``batch_keys`` it has)."""
        return {k: getattr(self, k) for k in self.batch_keys if hasattr(self, k)}

    def _micro_batches(self):
        tensors = self.full_batch()
        batch_size = next(iter(tensors.values())).shape[0]
        chunks = {k: v.chunk(min(self.grad_accum_steps, batch_size)) for k, v in tensors.items()}
        return [dict(zip(chunks, parts)) for parts in zip(*chunks.values())]

    def gt_or_usm(self, batch: dict, option: str):
        """The batch's USM-sharpened GT when ``option`` is on and the batch has one (real-world SR V2), else its GT."""
        return batch["gt_usm"] if self.opt.get(option) and "gt_usm" in batch else batch["gt"]

    def l1_target(self, batch: dict):
        """The GT the pixel loss (and CPEN_S1) see."""
        return self.gt_or_usm(batch, "l1_gt_usm")

    def _all_ranks_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().float().reshape(1)
        if self.opt["dist"]:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

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
        if getattr(self, "adversarial", None) is not None:
            nets["net_d"] = self.adversarial.net_d
        return nets

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)  # net_g_<iter>.pth (params, params_ema) and the training state
        if getattr(self, "adversarial", None) is not None:
            self.save_network(self.adversarial.net_d, "net_d", current_iter)

    @master_only
    def save_network(self, net, net_label, current_iter, param_key="params"):
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {key: {k: v.cpu() for k, v in self.get_bare_model(n).state_dict().items()}
                     for n, key in zip(nets, keys)}
        name = "latest" if current_iter == -1 else current_iter
        # logger.save_format: 'pth' (basicsr's, default) or 'safetensors' (with the network options)
        save_network_weights(save_dict, os.path.join(self.opt["path"]["models"], f"{net_label}_{name}"),
                             (self.opt.get("logger") or {}).get("save_format", "pth"),
                             self.opt.get(net_label.replace("net_", "network_", 1)))

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
