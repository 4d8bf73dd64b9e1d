"""HR-only super-resolution dataset: the LR image is made on the fly by MATLAB-style bicubic downsampling.

It saves generating and storing an LR folder per scale (``LR_bicubic/X2``, ``X4`` ...). Validation
images are whole, so their LR is exactly MATLAB's ``imresize(hr, 1/scale, 'bicubic')`` saved as 8-bit
PNG, which is how the standard SR benchmark LR images are made. Training patches are downscaled after
cropping, so the outer two LR pixels of a patch see the patch border (imresize's symmetric padding)
instead of the neighbouring image content.
"""
from __future__ import annotations

import os.path as osp

import numpy as np
from basicsr.data.data_util import paths_from_lmdb
from basicsr.data.transforms import augment, mod_crop
from basicsr.utils import FileClient, img2tensor, imfrombytes, scandir
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from .checks import read_meta_info


def bicubic_downsample(img_gt: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(img, 1/scale)`` (bicubic, antialiased) of an HWC float image in [0, 1],
    clipped and rounded to 8-bit levels as MATLAB does for uint8 images."""
    lq = imresize(img_gt, 1 / scale)
    return (np.clip(np.round(lq * 255.0), 0, 255) / 255.0).astype(np.float32)


@DATASET_REGISTRY.register()
class HRBicubicDataset(data.Dataset):
    """GT images from ``dataroot_gt``; LQ = MATLAB bicubic downsampling of the GT by ``scale``.

    Options (basicsr conventions):
        dataroot_gt (str): folder of HR images, or an ``.lmdb`` folder with ``io_backend.type: lmdb``.
        meta_info (str, optional): text file whose lines start with an image path relative to
            ``dataroot_gt`` (as in RealESRGANDataset); without it every file in the folder is used.
        io_backend (dict): basicsr file client options (``type: disk`` or ``lmdb``).
        scale (int): SR scale, filled in from the top-level ``scale`` by basicsr's option parser.
        phase (str): 'train' crops a random ``gt_size`` patch (its corner on the scale grid) and
            applies ``use_hflip`` / ``use_rot``; other phases mod-crop the whole GT to the scale.

    Items are basicsr's paired dict: ``lq``, ``gt`` (RGB, float32, CHW, [0, 1]), ``lq_path`` and
    ``gt_path`` (both the GT file: there is no LR file).
    """

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.scale = int(opt["scale"])
        self.train = opt["phase"] == "train"
        self.io_backend_opt = dict(opt["io_backend"])
        self.file_client = None
        gt_folder = opt["dataroot_gt"]
        if self.train:
            self.gt_size = int(opt["gt_size"])
            if self.gt_size % self.scale:
                raise ValueError(f"HRBicubicDataset {opt.get('name', '')!r}: gt_size {self.gt_size} must be a "
                                 f"multiple of scale {self.scale}")
        if self.io_backend_opt["type"] == "lmdb":
            self.io_backend_opt["db_paths"] = [gt_folder]
            self.io_backend_opt["client_keys"] = ["gt"]
            self.paths = paths_from_lmdb(gt_folder)
        elif opt.get("meta_info"):
            self.paths = [osp.join(gt_folder, name) for name in read_meta_info(opt["meta_info"])]
        else:
            self.paths = sorted(osp.join(gt_folder, name) for name in scandir(gt_folder))
        if not self.paths:
            raise ValueError(f"HRBicubicDataset {opt.get('name', '')!r}: no images found in {gt_folder}")

    def __len__(self) -> int:
        return len(self.paths)

    def _read_gt(self, gt_path: str) -> np.ndarray:
        if self.file_client is None:
            backend = dict(self.io_backend_opt)
            self.file_client = FileClient(backend.pop("type"), **backend)
        try:
            return imfrombytes(self.file_client.get(gt_path, "gt"), float32=True)
        except Exception as err:  # cv2 decodes a corrupt file to None and fails later without the name
            raise OSError(f"cannot read GT image {gt_path}: {err}") from err

    def _random_crop(self, img_gt: np.ndarray, gt_path: str) -> np.ndarray:
        h, w = img_gt.shape[:2]
        if h < self.gt_size or w < self.gt_size:
            raise ValueError(f"GT image {gt_path} is {h}x{w}, smaller than gt_size {self.gt_size}")
        # corner on the scale grid, so the patch's LR is the same grid as the whole image's LR
        top = np.random.randint(0, (h - self.gt_size) // self.scale + 1) * self.scale
        left = np.random.randint(0, (w - self.gt_size) // self.scale + 1) * self.scale
        return img_gt[top:top + self.gt_size, left:left + self.gt_size]

    def __getitem__(self, index: int) -> dict:
        gt_path = self.paths[index]
        img_gt = self._read_gt(gt_path)
        if self.train:
            img_gt = self._random_crop(img_gt, gt_path)
            img_gt = augment(img_gt, self.opt.get("use_hflip", False), self.opt.get("use_rot", False))
        else:
            img_gt = mod_crop(img_gt, self.scale)
        img_lq = bicubic_downsample(np.ascontiguousarray(img_gt), self.scale)
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        return {"lq": img_lq, "gt": img_gt, "lq_path": gt_path, "gt_path": gt_path}
