"""InpaintingDataset: ground-truth images + masks -> the 4-channel input of DiffIR's inpainting variant."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from basicsr.utils import FileClient, imfrombytes, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from ..inpainting import prepare_inpainting_input
from .masks import MaskGenerator, list_images, read_mask, seeded_rng


@DATASET_REGISTRY.register()
class InpaintingDataset(data.Dataset):
    """Images from a folder, each with a hole mask, as DiffIR's inpainting trainer sees them.

    Each item is ``{'lq': cat(gt * (1 - mask), mask) (4, H, W), 'gt': (3, H, W), 'mask': (1, H, W),
    'lq_path', 'gt_path', 'mask_path'}``, images RGB in [0, 1], mask 1 on holes.

    Options (``datasets.train`` / ``datasets.val`` blocks):

    * ``dataroot_gt``: folder of images.
    * ``dataroot_mask`` (optional): folder of fixed masks, ``<image stem><mask_suffix>.png``, white = hole.
      It may be the image folder itself (LaMa's evaluation layout: ``x.png`` next to ``x_mask000.png``
      with ``mask_suffix: _mask000``); files ending with the suffix are then not taken as images.
      Without it, masks are drawn by ``mask_generator``: fresh ones every time in training, and in
      validation one fixed mask per image from (``mask_seed``, index).
    * ``mask_generator``: a preset name of :mod:`diffir.data.masks` or LaMa-style options (default:
      ``train`` in training, ``thick_256`` otherwise).
    * ``out_size`` (optional): images smaller than this are reflect-padded up to it, then a random
      (training) or centre (validation) ``out_size`` square is cropped; masks are drawn at that size.
    * ``use_hflip`` (training): random horizontal flips.
    * ``augment: distortions`` (training): part of LaMa's Places ``distortions`` transform, each step
      with probability 0.5: a random affine warp (x / y scale 0.7-1.3, rotation +-40 degrees, shear
      +-0.1 degrees) before the crop and brightness / contrast jitter of +-0.2 after it. LaMa's
      perspective, optical distortion, CLAHE and hue/saturation steps are not reproduced.
    """

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.is_train = opt.get("phase") == "train"
        if "dataroot_gt" not in opt:
            raise KeyError("InpaintingDataset needs 'dataroot_gt' (the image folder)")
        self.mask_suffix = opt.get("mask_suffix", "")
        self.mask_root = Path(opt["dataroot_mask"]) if opt.get("dataroot_mask") else None
        same_folder = self.mask_root is not None and self.mask_root.resolve() == Path(opt["dataroot_gt"]).resolve()
        if same_folder and not self.mask_suffix:
            raise ValueError("dataroot_mask is the image folder itself: set mask_suffix (e.g. '_mask000') so masks "
                             "and images can be told apart")
        self.paths = list_images(opt["dataroot_gt"], exclude_suffix=self.mask_suffix if same_folder else "")
        if self.mask_root is not None:
            missing = [p.name for p in self.paths if not self._mask_path(p).is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} image(s) have no mask in {self.mask_root} (expected "
                                        f"<stem>{self.mask_suffix}.png), e.g. {missing[:3]}")
        self.mask_generator = MaskGenerator.from_options(
            opt.get("mask_generator", "train" if self.is_train else "thick_256"))
        self.mask_seed = int(opt.get("mask_seed", 0))
        self.out_size = opt.get("out_size")
        self.use_hflip = bool(opt.get("use_hflip", False)) and self.is_train
        augment = opt.get("augment")
        if augment not in (None, "none", "distortions"):
            raise ValueError(f"augment must be 'distortions' or absent, got {augment!r}")
        self.distortions = augment == "distortions" and self.is_train
        io_opt = dict(opt.get("io_backend", {"type": "disk"}))
        if io_opt.get("type", "disk") != "disk":
            raise ValueError(f"InpaintingDataset reads image folders (io_backend type 'disk'), got {io_opt['type']!r}")
        self.file_client = FileClient(io_opt.pop("type", "disk"), **io_opt)

    def __len__(self):
        return len(self.paths)

    def _mask_path(self, image_path: Path) -> Path:
        return self.mask_root / f"{image_path.stem}{self.mask_suffix}.png"

    def __getitem__(self, index):
        path = self.paths[index]
        # kept in OpenCV's BGR order until img2tensor: every step before it treats the channels alike
        image = imfrombytes(self.file_client.get(str(path), "gt"), float32=True)
        mask, mask_path = None, ""
        if self.mask_root is not None:
            mask_path = str(self._mask_path(path))
            mask = read_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {path} is "
                                 f"{image.shape[1]}x{image.shape[0]}")
        rng = np.random.default_rng(np.random.randint(2**31)) if self.is_train else seeded_rng(self.mask_seed, index)
        if self.distortions:
            image, mask = random_affine(image, mask, rng)
        if self.out_size:
            image, mask = self._crop(image, mask, int(self.out_size), rng)
        if self.use_hflip and rng.random() < 0.5:
            image = image[:, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        if self.distortions:
            image = jitter_brightness_contrast(image, rng)
        if mask is None:
            mask = self.mask_generator(image.shape[0], image.shape[1], rng)
        gt = img2tensor(np.ascontiguousarray(image), bgr2rgb=True, float32=True)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        lq = prepare_inpainting_input(gt[None], mask_t[None])[0]
        return {"lq": lq, "gt": gt, "mask": mask_t, "lq_path": str(path), "gt_path": str(path), "mask_path": mask_path}

    def _crop(self, image, mask, size, rng):
        height, width = image.shape[:2]
        pad_h, pad_w = max(0, size - height), max(0, size - width)
        if pad_h or pad_w:  # LaMa's PadIfNeeded: centred, border reflected without repeating the edge
            border = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
            image = cv2.copyMakeBorder(image, *border, cv2.BORDER_REFLECT_101)
            mask = cv2.copyMakeBorder(mask, *border, cv2.BORDER_REFLECT_101) if mask is not None else None
            height, width = image.shape[:2]
        if self.is_train:
            top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        else:
            top, left = (height - size) // 2, (width - size) // 2
        image = image[top:top + size, left:left + size]
        return image, (mask[top:top + size, left:left + size] if mask is not None else None)


def random_affine(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, p: float = 0.5):
    """LaMa's ``IAAAffine2(scale=(0.7, 1.3), rotate=(-40, 40), shear=(-0.1, 0.1))``, applied with probability
    ``p`` about the image centre: x and y scales drawn separately, rotation and shear in degrees."""
    if rng.random() >= p:
        return image, mask
    height, width = image.shape[:2]
    scale_x, scale_y = rng.uniform(0.7, 1.3, size=2)
    angle, shear = math.radians(rng.uniform(-40, 40)), math.radians(rng.uniform(-0.1, 0.1))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = rotation @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) @ np.diag([scale_x, scale_y])
    centre = np.array([width / 2, height / 2])
    matrix = np.hstack([linear, (centre - linear @ centre)[:, None]])
    warp = dict(dsize=(width, height), borderMode=cv2.BORDER_REFLECT_101)
    image = cv2.warpAffine(image, matrix, flags=cv2.INTER_LINEAR, **warp)
    if mask is not None:
        mask = cv2.warpAffine(mask, matrix, flags=cv2.INTER_NEAREST, **warp)
    return image, mask


def jitter_brightness_contrast(image: np.ndarray, rng: np.random.Generator, limit: float = 0.2,
                               p: float = 0.5) -> np.ndarray:
    """Albumentations' ``RandomBrightnessContrast(0.2, 0.2)`` on a [0, 1] image: ``alpha * x + beta``."""
    if rng.random() >= p:
        return image
    alpha, beta = 1 + rng.uniform(-limit, limit), rng.uniform(-limit, limit)
    return np.clip(alpha * image + beta, 0, 1).astype(np.float32)
