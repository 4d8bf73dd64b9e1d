"""Unpaired images from one folder, as square patches: the training data of an own diffusion prior."""
from __future__ import annotations

import os
import random

import cv2
import numpy as np
import torch
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from ..image_io import IMAGE_EXTENSIONS

CROPS = ("random", "center")


def list_images(folder: str) -> list[str]:
    """Every image file under ``folder`` (recursively), sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return paths


@DATASET_REGISTRY.register()
class ImageFolderDataset(data.Dataset):
    """Square RGB patches in [0, 1] from every image under ``dataroot_gt``; items ``{'gt', 'gt_path'}``.

    Options:
        dataroot_gt: folder of images (searched recursively).
        image_size: side of the patches.
        crop: 'random' (a random window at the native resolution; training) or 'center' (the
            short side resized to image_size, then the central square, as guided-diffusion
            prepares its data; validation).
        resize_short_side: with crop 'random', first resize the short side to image_size, so each
            patch sees the whole image's scale instead of a detail. Default False. Images smaller
            than the patch are always enlarged.
        use_hflip: random horizontal flips (default True for the train phase).
    """

    def __init__(self, opt: dict):
        super().__init__()
        for key in ("dataroot_gt", "image_size"):
            if key not in opt:
                raise KeyError(f"ImageFolderDataset needs option {key!r}")
        self.opt = opt
        self.paths = list_images(opt["dataroot_gt"])
        self.image_size = int(opt["image_size"])
        self.crop = opt.get("crop", "random" if opt.get("phase") == "train" else "center")
        if self.crop not in CROPS:
            raise ValueError(f"ImageFolderDataset crop must be one of {CROPS}, got {self.crop!r}")
        self.resize_short_side = bool(opt.get("resize_short_side", False))
        self.use_hflip = bool(opt.get("use_hflip", opt.get("phase") == "train"))

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: str) -> np.ndarray:
        img = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR uint8; greyscale files are expanded to 3 channels
        if img is None:
            raise OSError(f"cannot read image {path}")
        return img.astype(np.float32) / 255.0

    def _resize_short_side(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        factor = self.image_size / min(h, w)
        size = (max(self.image_size, round(w * factor)), max(self.image_size, round(h * factor)))
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        return cv2.resize(img, size, interpolation=interpolation)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        img = self._read(path)
        s = self.image_size
        if self.crop == "center" or self.resize_short_side or min(img.shape[:2]) < s:
            img = self._resize_short_side(img)
        h, w = img.shape[:2]
        if self.crop == "center":
            top, left = (h - s) // 2, (w - s) // 2
        else:
            top, left = random.randint(0, h - s), random.randint(0, w - s)
        img = img[top:top + s, left:left + s]
        if self.use_hflip and random.random() < 0.5:
            img = img[:, ::-1]
        gt = img2tensor(np.ascontiguousarray(img), bgr2rgb=True, float32=True)
        return {"gt": torch.clamp(gt, 0, 1), "gt_path": path}
