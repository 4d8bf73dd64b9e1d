"""The pix2pixHD PatchGAN discriminator of LaMa / DiffIR inpainting, returning its features too."""
from __future__ import annotations

import torch
import torch.nn as nn
from basicsr.utils.registry import ARCH_REGISTRY

_NORMS = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "none": None}


@ARCH_REGISTRY.register()
class NLayerDiscriminator(nn.Module):
    """PatchGAN with ``n_layers`` stride-2 4x4 convolutions, one stride-1 convolution and a 1-channel head.

    ``forward(x)`` returns ``(logits, features)``: the patch logits and the output of every stage before
    the head, which the feature-matching loss compares between real and generated images. Stages are
    named ``model0`` ... ``model{n_layers + 1}`` as in LaMa, so LaMa / DiffIR discriminator weights load
    directly. The official inpainting setting is ``ndf=64, n_layers=4`` with batch norm.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 4, norm: str = "batch"):
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {sorted(_NORMS)}, got {norm!r}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        norm_layer = _NORMS[norm]
        self.n_layers = n_layers

        def stage(c_in, c_out, stride, normalise=True):
            layers = [nn.Conv2d(c_in, c_out, kernel_size=4, stride=stride, padding=2)]
            if normalise and norm_layer is not None:
                layers.append(norm_layer(c_out))
            layers.append(nn.LeakyReLU(0.2, True))
            return nn.Sequential(*layers)

        channels = [min(ndf * 2**i, 512) for i in range(n_layers + 1)]
        stages = [stage(input_nc, channels[0], 2, normalise=False)]
        stages += [stage(channels[i - 1], channels[i], 2) for i in range(1, n_layers)]
        stages.append(stage(channels[n_layers - 1], channels[n_layers], 1))
        stages.append(nn.Sequential(nn.Conv2d(channels[n_layers], 1, kernel_size=4, stride=1, padding=2)))
        for i, module in enumerate(stages):
            self.add_module(f"model{i}", module)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for i in range(self.n_layers + 2):
            x = getattr(self, f"model{i}")(x)
            features.append(x)
        return features[-1], features[:-1]
