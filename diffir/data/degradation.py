"""Real-ESRGAN second-order degradation of a training batch, on any device.

The official real-world SR code synthesises LQ images inside the model's ``feed_data`` (the logic of
basicsr's RealESRNetModel / RealESRGANModel) with ``.cuda()`` hard-coded for DiffJPEG, USMSharp and
the training-pair pool. Here the same pipeline is a standalone object bound to a device, so the
model, a test or a preview script can run it on CPU or GPU:

1. first stage: blur (``kernel1``), random resize, Gaussian or Poisson noise, JPEG;
2. second stage: blur (``kernel2``, with ``second_blur_prob``), random resize, noise, then in random
   order JPEG and [resize to GT size / scale + final sinc filter];
3. round to 8-bit levels, paired random crop of ``gt_size``, training-pair pool (``queue_size``).

The blur and sinc kernels are drawn per image by basicsr's ``RealESRGANDataset``; everything else is
drawn here per batch, exactly as the official code does. As in the official DiffIR models, LQ is
synthesised from the GT itself (from the USM-sharpened GT when ``gt_usm: true``, which then also
replaces the GT), and ``gt_usm`` is the USM-sharpened final GT patch (the GT itself when it is
already sharpened). basicsr's RealESRGANModel instead always degrades the sharpened GT.
"""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F
from basicsr.data.degradations import random_add_gaussian_noise_pt, random_add_poisson_noise_pt
from basicsr.data.transforms import paired_random_crop
from basicsr.utils import DiffJPEG, USMSharp
from basicsr.utils.img_process_util import filter2D

# top-level option keys the pipeline reads (the official names)
REQUIRED_KEYS = (
    "scale", "gt_size",
    "resize_prob", "resize_range", "gaussian_noise_prob", "noise_range", "poisson_scale_range",
    "gray_noise_prob", "jpeg_range",
    "second_blur_prob", "resize_prob2", "resize_range2", "gaussian_noise_prob2", "noise_range2",
    "poisson_scale_range2", "gray_noise_prob2", "jpeg_range2",
)
_RESIZE_MODES = ("area", "bilinear", "bicubic")


class RealESRGANDegradation:
    """Turn a RealESRGANDataset batch (``gt``, ``kernel1``, ``kernel2``, ``sinc_kernel``) into
    ``(lq, gt, gt_usm)`` on ``device``.

    ``opt`` is the whole option dict; the keys in :data:`REQUIRED_KEYS` are read from its top level,
    plus ``queue_size`` (default 180; 0 disables the pool) and ``gt_usm`` (default false).
    """

    def __init__(self, opt: dict, device: torch.device):
        missing = [key for key in REQUIRED_KEYS if key not in opt]
        if missing:
            raise KeyError(f"the Real-ESRGAN degradation (high_order_degradation: true) needs the top-level "
                           f"option keys {missing}; see options/train/RealSR/ for the official values")
        self.opt = opt
        self.device = torch.device(device)
        self.scale = int(opt["scale"])
        self.gt_size = int(opt["gt_size"])
        self.queue_size = int(opt.get("queue_size", 180))
        self.sharpen_gt = bool(opt.get("gt_usm", False))
        # deepcopy: basicsr's JPEG quantisation tables are module-level Parameters shared by every
        # DiffJPEG instance, so moving one instance would move (and break) all others
        self.jpeg = copy.deepcopy(DiffJPEG(differentiable=False)).to(self.device).requires_grad_(False)
        self.usm = USMSharp().to(self.device)
        self._queue_lq = self._queue_gt = None
        self._queue_filled = 0

    @torch.no_grad()
    def __call__(self, data: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lq, gt, gt_usm) for a training batch from RealESRGANDataset; the queue (pool) is applied."""
        gt = data["gt"].to(self.device)
        if self.sharpen_gt:
            gt = self.usm(gt)
        kernels = [data[key].to(self.device) for key in ("kernel1", "kernel2", "sinc_kernel")]
        smallest = int(min(gt.shape[-2:]) * self.opt["resize_range"][0])
        if smallest <= kernels[0].shape[-1] // 2:
            raise ValueError(f"GT images of {tuple(gt.shape[-2:])} are too small for the degradation: the first "
                             f"resize can shrink them to {smallest} pixels, too few for the "
                             f"{kernels[0].shape[-1]}x{kernels[0].shape[-1]} blur (RealESRGANDataset gives 400 x 400)")
        lq = self.degrade(gt, *kernels)
        gt, lq = paired_random_crop(gt, lq, self.gt_size, self.scale)
        lq, gt = self._pool(lq, gt)
        return lq.contiguous(), gt, gt if self.sharpen_gt else self.usm(gt)  # never sharpen twice

    def degrade(self, gt: torch.Tensor, kernel1: torch.Tensor, kernel2: torch.Tensor,
                sinc_kernel: torch.Tensor) -> torch.Tensor:
        """The two degradation stages: the LQ image at GT size / scale, on 8-bit levels in [0, 1]."""
        opt = self.opt
        height, width = gt.shape[-2:]
        lq_size = (height // self.scale, width // self.scale)

        out = filter2D(gt, kernel1)
        out = F.interpolate(out, scale_factor=self._resize_factor(opt["resize_prob"], opt["resize_range"]),
                            mode=random.choice(_RESIZE_MODES))
        out = self._add_noise(out, opt["gaussian_noise_prob"], opt["noise_range"], opt["poisson_scale_range"],
                              opt["gray_noise_prob"])
        out = self._jpeg(out, opt["jpeg_range"])

        if np.random.uniform() < opt["second_blur_prob"]:
            out = filter2D(out, kernel2)
        factor = self._resize_factor(opt["resize_prob2"], opt["resize_range2"])
        out = F.interpolate(out, size=(int(height / self.scale * factor), int(width / self.scale * factor)),
                            mode=random.choice(_RESIZE_MODES))
        out = self._add_noise(out, opt["gaussian_noise_prob2"], opt["noise_range2"], opt["poisson_scale_range2"],
                              opt["gray_noise_prob2"])
        # resizing back + sinc before or after the last JPEG; other orders give twisted lines (Real-ESRGAN)
        if np.random.uniform() < 0.5:
            out = filter2D(F.interpolate(out, size=lq_size, mode=random.choice(_RESIZE_MODES)), sinc_kernel)
            out = self._jpeg(out, opt["jpeg_range2"])
        else:
            out = self._jpeg(out, opt["jpeg_range2"])
            out = filter2D(F.interpolate(out, size=lq_size, mode=random.choice(_RESIZE_MODES)), sinc_kernel)
        return torch.clamp((out * 255.0).round(), 0, 255) / 255.0

    @staticmethod
    def _resize_factor(probabilities, factor_range) -> float:
        direction = random.choices(("up", "down", "keep"), probabilities)[0]
        if direction == "up":
            return np.random.uniform(1, factor_range[1])
        if direction == "down":
            return np.random.uniform(factor_range[0], 1)
        return 1.0

    @staticmethod
    def _add_noise(img, gaussian_prob, sigma_range, poisson_scale_range, gray_prob):
        if np.random.uniform() < gaussian_prob:
            return random_add_gaussian_noise_pt(img, sigma_range=sigma_range, clip=True, rounds=False,
                                                gray_prob=gray_prob)
        return random_add_poisson_noise_pt(img, scale_range=poisson_scale_range, gray_prob=gray_prob, clip=True,
                                           rounds=False)

    def _jpeg(self, img, quality_range):
        quality = img.new_zeros(img.size(0)).uniform_(*quality_range)
        # clamp first: JPEG of out-of-range values gives strong artefacts. DiffJPEG's output can have
        # permuted strides, which filter2D's .view() rejects on CPU
        return self.jpeg(torch.clamp(img, 0, 1), quality=quality).contiguous()

    def _pool(self, lq: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-pair pool: one batch shares its resize/noise choices, so batches are mixed through a
        pool of ``queue_size`` pairs. Until it is full a batch passes through (and is stored); then each
        batch is swapped for ``batch`` random pairs from the pool."""
        if self.queue_size == 0:
            return lq, gt
        batch = lq.size(0)
        if self._queue_lq is None:
            if self.queue_size % batch:
                raise ValueError(f"queue_size {self.queue_size} must be a multiple of the training batch size per "
                                 f"process ({batch}); change queue_size or datasets.train.batch_size_per_gpu")
            self._queue_lq = lq.new_zeros((self.queue_size, *lq.shape[1:]))
            self._queue_gt = gt.new_zeros((self.queue_size, *gt.shape[1:]))
        elif lq.shape[1:] != self._queue_lq.shape[1:] or self.queue_size % batch:
            raise ValueError(f"training batch {tuple(lq.shape)} does not fit the pool of "
                             f"{tuple(self._queue_lq.shape)} built from the first batch; keep batch and patch "
                             f"sizes fixed during training")
        if self._queue_filled < self.queue_size:
            self._queue_lq[self._queue_filled:self._queue_filled + batch] = lq
            self._queue_gt[self._queue_filled:self._queue_filled + batch] = gt
            self._queue_filled += batch
            return lq, gt
        order = torch.randperm(self.queue_size, device=self.device)
        self._queue_lq, self._queue_gt = self._queue_lq[order], self._queue_gt[order]
        lq_out, gt_out = self._queue_lq[:batch].clone(), self._queue_gt[:batch].clone()
        self._queue_lq[:batch], self._queue_gt[:batch] = lq, gt
        return lq_out, gt_out
