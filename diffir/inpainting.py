"""The inpainting network's input and output conventions, for training, validation and inference.

* Input (official DiffIR inpainting variant): 4 channels, ``cat(image * (1 - mask), mask)``, with the
  image in [0, 1] RGB and the mask 1 on holes, 0 on known pixels.
* Output: the network predicts every pixel; the result keeps the known pixels exactly,
  ``mask * prediction + (1 - mask) * image`` (LaMa's ``inpainted``).
"""
from __future__ import annotations

import torch

from .utils.padding import crop_to, pad_to_multiple


def check_inpainting_pair(image: torch.Tensor, mask: torch.Tensor) -> None:
    """Refuse an image / mask pair that is not (B, 3, H, W) / (B, 1, H, W) of one batch and size."""
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be a (B, 3, H, W) tensor, got shape {tuple(image.shape)}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be a (B, 1, H, W) tensor (1 = hole), got shape {tuple(mask.shape)}")
    if image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in batch or spatial size")


def prepare_inpainting_input(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 4-channel network input ``cat(image * (1 - mask), mask)`` for (B, 3, H, W) / (B, 1, H, W) tensors."""
    check_inpainting_pair(image, mask)
    mask = mask.to(image.dtype)
    return torch.cat([image * (1 - mask), mask], dim=1)


def composite(prediction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep the known pixels of ``image`` and take the holes from ``prediction``."""
    check_inpainting_pair(image, mask)
    if prediction.shape != image.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and image {tuple(image.shape)} differ in shape")
    mask = mask.to(prediction.dtype)
    return mask * prediction + (1 - mask) * image


@torch.no_grad()
def inpaint(net: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, **forward_kwargs) -> torch.Tensor:
    """Fill the holes of ``image`` with an eval-mode DiffIRS2 (any size; padded to its size multiple).

    ``forward_kwargs`` go to the network (``noise=`` / ``generator=`` to fix stage two's sample). The
    input is padded by reflection, so the image and the mask are padded alike (LaMa's predict.py pads
    both); the output is cropped back and composited, so known pixels come back unchanged.
    """
    padded, size = pad_to_multiple(prepare_inpainting_input(image, mask), getattr(net, "size_multiple", 8))
    prediction = crop_to(net(padded, **forward_kwargs), size)
    return composite(prediction, image, mask)
