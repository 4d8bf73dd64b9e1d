"""Restormer-style progressive training (the official DiffIR motion-deblurring recipe).

Training runs in stages: stage ``i`` lasts ``iters[i]`` iterations and trains on ``mini_batch_sizes[i]``
patches of ``gt_sizes[i]`` pixels, going from many small patches to few large ones. The data loader
always yields ``batch_size_per_gpu`` patches of the largest size ``gt_size``; each iteration keeps the
first ``mini_batch_size`` of them and crops one common random window of the current patch size.
After the last stage its sizes stay in use.

The options live in ``datasets.train`` as in Restormer::

    batch_size_per_gpu: 8
    mini_batch_sizes: [8, 4, 2, 2, 1, 1]
    iters: [92000, 80000, 38000, 33000, 33000, 24000]
    gt_size: 512
    gt_sizes: [192, 256, 320, 384, 464, 512]

The dataset itself is basicsr's PairedImageDataset: with ``use_hflip: true`` and ``use_rot: true`` its
random flips and transpose draw each of the 8 flip/rotation combinations with probability 1/8, the
same distribution as Restormer's ``geometric_augs``, so no separate deblurring dataset is needed.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

import torch
from basicsr.data.transforms import paired_random_crop

PROGRESSIVE_KEYS = ("mini_batch_sizes", "iters", "gt_sizes")


@dataclass(frozen=True)
class ProgressiveSchedule:
    mini_batch_sizes: tuple[int, ...]
    iters: tuple[int, ...]
    gt_sizes: tuple[int, ...]
    gt_size: int
    batch_size: int
    scale: int = 1

    def __post_init__(self):
        lengths = {len(self.mini_batch_sizes), len(self.iters), len(self.gt_sizes)}
        if len(lengths) != 1 or not self.iters:
            raise ValueError(f"progressive training: mini_batch_sizes, iters and gt_sizes must be non-empty lists of "
                             f"the same length, got {len(self.mini_batch_sizes)}, {len(self.iters)} and "
                             f"{len(self.gt_sizes)}")
        for key in (*PROGRESSIVE_KEYS, "gt_size", "batch_size", "scale"):
            values = getattr(self, key)
            for value in values if isinstance(values, tuple) else (values,):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ValueError(f"progressive training: {key} must hold positive integers, got {values!r}")
        too_large = [size for size in self.gt_sizes if size > self.gt_size]
        if too_large:
            raise ValueError(f"progressive training: gt_sizes {list(self.gt_sizes)} must not exceed gt_size "
                             f"{self.gt_size} (the patch size the data loader crops); {too_large} do")
        if self.batch_size < max(self.mini_batch_sizes):
            raise ValueError(f"progressive training: batch_size_per_gpu {self.batch_size} is smaller than the "
                             f"largest mini batch {max(self.mini_batch_sizes)} in mini_batch_sizes")
        off_grid = [size for size in (*self.gt_sizes, self.gt_size) if size % self.scale]
        if off_grid:
            raise ValueError(f"progressive training: patch sizes {off_grid} are not multiples of scale {self.scale}")

    @classmethod
    def from_options(cls, dataset_opt: dict, scale: int | None = None) -> ProgressiveSchedule | None:
        """The schedule of a train dataset's options, or None when it has no progressive keys.

        ``scale`` defaults to the dataset's ``scale`` (basicsr's option parser copies it there), else 1.
        """
        present = [key for key in PROGRESSIVE_KEYS if dataset_opt.get(key) is not None]
        if not present:
            return None
        missing = [key for key in (*PROGRESSIVE_KEYS, "gt_size", "batch_size_per_gpu")
                   if dataset_opt.get(key) is None]
        if missing:
            raise ValueError(f"progressive training: datasets.train has {present} but lacks {missing}")
        return cls(mini_batch_sizes=tuple(dataset_opt["mini_batch_sizes"]), iters=tuple(dataset_opt["iters"]),
                   gt_sizes=tuple(dataset_opt["gt_sizes"]), gt_size=dataset_opt["gt_size"],
                   batch_size=dataset_opt["batch_size_per_gpu"],
                   scale=scale if scale is not None else dataset_opt.get("scale", 1))

    @property
    def total_iter(self) -> int:
        return sum(self.iters)

    @cached_property
    def stage_ends(self) -> tuple[int, ...]:
        """The last iteration of each stage (cached in the instance dict, which frozen does not guard)."""
        return tuple(accumulate(self.iters))

    def stage(self, current_iter: int) -> int:
        """Index of the stage that ``current_iter`` (basicsr counts from 1) belongs to."""
        return min(bisect.bisect_left(self.stage_ends, current_iter), len(self.stage_ends) - 1)

    def at(self, current_iter: int) -> tuple[int, int]:
        """(mini_batch_size, patch_size) to train on at ``current_iter``."""
        stage = self.stage(current_iter)
        return self.mini_batch_sizes[stage], self.gt_sizes[stage]

    def crop(self, lq: torch.Tensor, gt: torch.Tensor, current_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch for ``current_iter`` out of a full batch loaded at ``gt_size``."""
        mini_batch_size, patch_size = self.at(current_iter)
        return crop_batch(lq, gt, mini_batch_size, patch_size, self.scale)


def crop_batch(lq: torch.Tensor, gt: torch.Tensor, mini_batch_size: int, gt_patch_size: int,
               scale: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``mini_batch_size`` samples of (lq, gt), all cropped to one random window of
    ``gt_patch_size`` GT pixels (``gt_patch_size // scale`` LQ pixels, at the matching position)."""
    if lq.shape[0] != gt.shape[0]:
        raise ValueError(f"lq and gt batches differ in size: {tuple(lq.shape)} vs {tuple(gt.shape)}")
    if mini_batch_size > lq.shape[0]:
        raise ValueError(f"mini batch {mini_batch_size} is larger than the loaded batch of {lq.shape[0]}; "
                         f"batch_size_per_gpu must be at least max(mini_batch_sizes)")
    gt, lq = paired_random_crop(gt[:mini_batch_size], lq[:mini_batch_size], gt_patch_size, scale)
    return lq, gt
