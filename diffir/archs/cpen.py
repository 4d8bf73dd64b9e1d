"""CPEN: the compact IR prior extraction network.

CPEN_S1 (stage one) sees the LQ image and the ground truth and produces the IPR, a 256-d vector;
CPEN_S2 (stage two) sees only the LQ image and produces the condition vector of the IPR diffusion.
Both are the same network: a conv stem, residual blocks, three more convs to 256 channels, global
average pooling and a two-layer MLP. The IPR ends with a LeakyReLU, as in the official code.

How each task feeds CPEN (official behaviour): the LQ image is pixel-unshuffled by ``lq_unshuffle``
(1 for x4 SR, 2 for x2, 4 for x1 SR, deblurring and inpainting); for CPEN_S1 the ground truth is
pixel-unshuffled by 4 and concatenated on the channel axis, so both meet at one resolution.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

N_FEATS = 64  # hard-coded in the official code: the IPR always has 4 * 64 = 256 values
IPR_DIM = 4 * N_FEATS  # length of the IPR and of CPEN_S2's condition vector
GT_UNSHUFFLE = 4


class ResBlock(nn.Module):
    """conv-LReLU-conv with an identity skip and no activation after the add (keys body.0, body.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return self.body(x) + x


class CPEN(nn.Module):
    """Maps the LQ image (and, for CPEN_S1, the ground truth) to a (B, 256) vector.

    Args:
        lq_channels: channels of the LQ image (3, or 4 for inpainting's image + mask).
        lq_unshuffle: pixel-unshuffle factor applied to the LQ image.
        gt_channels: channels of the ground truth, or 0 for CPEN_S2 (LQ only).
        n_encoder_res: number of residual blocks.
    """

    def __init__(self, lq_channels: int, lq_unshuffle: int, gt_channels: int = 0, n_encoder_res: int = 6):
        super().__init__()
        self.lq_unshuffle = lq_unshuffle
        self.uses_gt = gt_channels > 0
        in_channels = lq_channels * lq_unshuffle ** 2 + gt_channels * GT_UNSHUFFLE ** 2
        n = N_FEATS
        self.E = nn.Sequential(
            nn.Conv2d(in_channels, n, 3, padding=1), nn.LeakyReLU(0.1, True),
            *[ResBlock(n) for _ in range(n_encoder_res)],
            nn.Conv2d(n, n * 2, 3, padding=1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(n * 2, n * 2, 3, padding=1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(n * 2, n * 4, 3, padding=1), nn.LeakyReLU(0.1, True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.mlp = nn.Sequential(
            nn.Linear(n * 4, n * 4), nn.LeakyReLU(0.1, True),
            nn.Linear(n * 4, n * 4), nn.LeakyReLU(0.1, True),
        )
        # every conv but the pooling's input is 3x3 with padding 1: the features of a pixel depend on
        # the input within this many pixels (at the unshuffled resolution)
        self.receptive_radius = sum(m.kernel_size[0] // 2 for m in self.E.modules() if isinstance(m, nn.Conv2d))

    def _encoder_input(self, lq: torch.Tensor, gt: torch.Tensor | None) -> torch.Tensor:
        x = F.pixel_unshuffle(lq, self.lq_unshuffle) if self.lq_unshuffle > 1 else lq
        if self.uses_gt:
            if gt is None:
                raise ValueError("CPEN_S1 needs the ground truth as well as the LQ image")
            x = torch.cat([x, F.pixel_unshuffle(gt, GT_UNSHUFFLE)], dim=1)
        return x

    def forward(self, lq: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.E(self._encoder_input(lq, gt)).flatten(1))

    def forward_tiled(self, lq: torch.Tensor, tile: int, gt: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` with the convolutions run on ``tile`` x ``tile`` pieces of the LQ input (pixels).

        ``lq`` is a tensor or anything with a ``shape`` that gives tensors when sliced ``lq[..., rows, cols]``
        (the Restorer's input, converted to float region by region).

        The encoder ends in global average pooling, so each piece is run with a halo as wide as the
        receptive field and the pooled sums of its inner part are added up: the same vector as
        ``forward`` up to float summation order, with memory bounded by the tile. An input that fits in
        one tile takes the plain ``forward``.
        """
        if max(lq.shape[-2:]) <= tile:
            return self.forward(lq, gt)
        features, halo = self.E[:-1], self.receptive_radius
        u = self.lq_unshuffle
        if lq.shape[-2] % u or lq.shape[-1] % u:
            raise ValueError(f"CPEN unshuffles its input by {u}: the size {tuple(lq.shape[-2:])} must be a multiple")
        # encoder resolution; pixel unshuffling is local, so each region is unshuffled on its own
        height, width = lq.shape[-2] // u, lq.shape[-1] // u
        tile = max(1, tile // u)
        total = None
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                top, bottom = max(0, y0 - halo), min(height, y1 + halo)
                left, right = max(0, x0 - halo), min(width, x1 + halo)
                region = self._encoder_input(
                    lq[..., top * u:bottom * u, left * u:right * u],
                    None if gt is None else gt[..., top * GT_UNSHUFFLE:bottom * GT_UNSHUFFLE,
                                                left * GT_UNSHUFFLE:right * GT_UNSHUFFLE])
                dtype = region.dtype
                inner = features(region)[..., y0 - top:y1 - top, x0 - left:x1 - left]
                part = inner.sum(dim=(2, 3), dtype=torch.promote_types(inner.dtype, torch.float32))
                total = part if total is None else total + part
        pooled = (total / (height * width)).to(dtype)
        return self.mlp(pooled)
