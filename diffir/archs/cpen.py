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
IPR_DIM = 4 * N_FEATS
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

    def forward(self, lq: torch.Tensor, gt: torch.Tensor | None = None) -> torch.Tensor:
        x = F.pixel_unshuffle(lq, self.lq_unshuffle) if self.lq_unshuffle > 1 else lq
        if self.uses_gt:
            if gt is None:
                raise ValueError("CPEN_S1 needs the ground truth as well as the LQ image")
            x = torch.cat([x, F.pixel_unshuffle(gt, GT_UNSHUFFLE)], dim=1)
        return self.mlp(self.E(x).flatten(1))
