"""Image quality metrics, computed the way the papers report them (the benchmark suite's and test.py's).

* PSNR / SSIM: basicsr's ``calculate_psnr`` / ``calculate_ssim`` on 8-bit images; for SR on the Y
  channel with ``crop_border = scale`` (DiffIR's ``metrics/PSNR.py``), for deblurring and inpainting
  on RGB with no crop. basicsr's Y conversion expects BGR, so RGB arrays are flipped before the call.
* LPIPS: the ``lpips`` package (its linear-layer weights ship with it); the AlexNet / VGG16 backbone is
  torchvision's ImageNet model, read from a local file or from torchvision's download cache, never
  downloaded here. Inputs in [-1, 1] (DiffIR's ``metrics/LPIPS.py``).
* NIQE: basicsr's ``calculate_niqe`` (no reference; Y channel, crop_border = scale).
* FID (inpainting sets): :mod:`diffir.metrics.fid`, over the whole set.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from ..image_io import to_8bit

IMAGE_METRICS = ("psnr", "ssim", "lpips", "niqe")
SET_METRICS = ("fid",)
NEEDS_GT = {"psnr", "ssim", "lpips", "fid"}
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "niqe": False, "fid": False}
DEFAULT_METRICS = {"sr": ("psnr", "ssim", "lpips"), "deblur": ("psnr", "ssim"), "inpaint": ("lpips", "ssim", "fid")}

# torchvision ImageNet backbones that lpips wraps, with their torchvision file names and URLs
_BACKBONES = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}


class MissingWeightsError(FileNotFoundError):
    """A metric whose pretrained weights are not on this machine (the message says which file to get)."""


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Any image array from :func:`diffir.image_io.read_image` as 8-bit (H, W, 3) RGB (alpha dropped)."""
    if image.dtype == np.uint16:
        image = to_8bit(image)
    elif image.dtype != np.uint8:
        image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def psnr(output: np.ndarray, gt: np.ndarray, crop_border: int, y_channel: bool) -> float:
    from basicsr.metrics import calculate_psnr

    return float(calculate_psnr(output[..., ::-1], gt[..., ::-1], crop_border, test_y_channel=y_channel))


def tensor_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) between two tensors of values in [0, 1] (clamped), in float32: for timing scripts."""
    mse = (a.float().clamp(0, 1) - b.float().clamp(0, 1)).square().mean().item()
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def ssim(output: np.ndarray, gt: np.ndarray, crop_border: int, y_channel: bool) -> float:
    from basicsr.metrics import calculate_ssim

    return float(calculate_ssim(output[..., ::-1], gt[..., ::-1], crop_border, test_y_channel=y_channel))


NIQE_BLOCK = 96  # basicsr's NIQE fits its statistics over 96x96 blocks and needs at least two


def niqe(output: np.ndarray, crop_border: int) -> float:
    """NIQE of an 8-bit RGB image; NaN when it has fewer than two 96x96 blocks after the crop."""
    from basicsr.metrics import calculate_niqe

    height, width = (n - 2 * crop_border for n in output.shape[:2])
    if (height // NIQE_BLOCK) * (width // NIQE_BLOCK) < 2:
        return float("nan")
    return float(calculate_niqe(output[..., ::-1], crop_border, input_order="HWC", convert_to="y"))


def backbone_file(net: str, path: str | os.PathLike | None = None) -> Path:
    """The local torchvision weights of LPIPS's backbone: ``path``, or torchvision's download cache."""
    if net not in _BACKBONES:
        raise ValueError(f"LPIPS backbone must be one of {list(_BACKBONES)}, got {net!r}")
    name, url = _BACKBONES[net]
    if path is not None:
        if not Path(path).is_file():
            raise MissingWeightsError(f"LPIPS ({net}) backbone weights not found at {path}")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return cached
    raise MissingWeightsError(f"LPIPS ({net}) needs torchvision's ImageNet weights {name}, which are not in "
                              f"{cached.parent}. Download {url} into that folder, or pass its path "
                              f"(--lpips-weights); nothing is downloaded automatically")


class LPIPSMetric:
    """LPIPS distance between (H, W, 3) uint8 RGB images; lower is more similar."""

    def __init__(self, net: str = "alex", weights: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu"):
        import lpips

        backbone = torch.load(backbone_file(net, weights), map_location="cpu", weights_only=True)
        # pnet_rand: build the backbone without torchvision's download, then load the local weights
        with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        own = self.model.net.state_dict()
        # lpips splits torchvision's `features` into slices but keeps the layer indices: sliceK.<i>.w = features.<i>.w
        mapped = {key: backbone[re.sub(r"^slice\d+\.", "features.", key)] for key in own}
        self.model.net.load_state_dict(mapped)
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, output: np.ndarray, gt: np.ndarray) -> float:
        def tensor(image):
            return torch.from_numpy(image).permute(2, 0, 1)[None].float().to(self.device) / 127.5 - 1

        return float(self.model(tensor(output), tensor(gt)).item())


class FIDMetric:
    """FID over a set: collects Inception features of outputs and ground truths image by image."""

    def __init__(self, weights: str | os.PathLike | None, device: str | torch.device = "cpu",
                 random_weights: bool = False):
        from .fid import FIDAccumulator, InceptionFeatures

        try:
            extractor = InceptionFeatures(weights, random_weights=random_weights)
        except FileNotFoundError as err:
            raise MissingWeightsError(str(err)) from err
        self.accumulator = FIDAccumulator(extractor, device)

    def reset(self) -> None:
        self.accumulator.reset()

    def update(self, output: np.ndarray, gt: np.ndarray) -> None:
        def tensor(image):
            return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255

        self.accumulator.update(tensor(output), tensor(gt))

    def compute(self) -> float:
        return self.accumulator.compute()
