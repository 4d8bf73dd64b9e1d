"""The losses of LaMa's inpainting trainer, which the official DiffIR inpainting configs use.

Official weights (``DiffIRS{1,2}-{celeba,place2}.yaml``): masked L1 with ``weight_known: 10,
weight_missing: 0`` (only known pixels), non-saturating adversarial loss with R1 penalty (weight 10,
``gp_coef: 0.001``, ``mask_as_fake_target``, ``allow_scale_mask``), discriminator feature matching
(weight 100) and ResNetPL (weight 30), LaMa's perceptual loss on an ADE20k-trained ResNet50-dilated.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.losses.gan_loss import r1_penalty
from basicsr.utils.registry import LOSS_REGISTRY

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@LOSS_REGISTRY.register()
class MaskedL1Loss(nn.Module):
    """Per-pixel L1 weighted ``weight_missing`` on holes and ``weight_known`` elsewhere, averaged over all
    elements (LaMa's ``masked_l1_loss``; its weights already play the role of ``loss_weight``)."""

    def __init__(self, weight_known: float = 10.0, weight_missing: float = 0.0):
        super().__init__()
        self.weight_known = weight_known
        self.weight_missing = weight_missing

    def forward(self, pred, target, mask):
        weights = mask * self.weight_missing + (1 - mask) * self.weight_known
        return (weights * (pred - target).abs()).mean()


@LOSS_REGISTRY.register()
class FeatureMatchingLoss(nn.Module):
    """Mean over discriminator stages of the MSE between features of generated and real images.

    With a mask, errors are weighted by ``1 - mask`` (bilinearly resized to each stage), i.e. only known
    regions count (LaMa's ``pass_mask``; the official configs do not pass it).
    """

    def __init__(self, loss_weight: float = 100.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, fake_features, real_features, mask=None):
        if len(fake_features) != len(real_features):
            raise ValueError(f"got {len(fake_features)} fake and {len(real_features)} real feature maps")
        terms = []
        for fake, real in zip(fake_features, real_features):
            if mask is None:
                terms.append(F.mse_loss(fake, real))
            else:
                known = 1 - F.interpolate(mask, size=fake.shape[-2:], mode="bilinear", align_corners=False)
                terms.append(((fake - real).pow(2) * known).mean())
        return self.loss_weight * torch.stack(terms).mean()


@LOSS_REGISTRY.register()
class NonSaturatingR1Loss(nn.Module):
    """Non-saturating GAN loss with an R1 gradient penalty on real images (LaMa's ``kind: r1``).

    * Generator: ``loss_weight * mean(softplus(-D(fake)))``.
    * Discriminator: ``mean(softplus(-D(real))) + gp_coef * R1 + mean(fake term)``, where
      R1 = batch mean of ``||dD(real)/d real||^2`` and the fake term is ``softplus(D(fake))``. With
      ``mask_as_fake_target`` only the holes are "fake": outside the (resized) mask the fake term is
      ``softplus(-D(fake))``. ``loss_weight`` does not scale the discriminator loss (as in LaMa).
    * ``allow_scale_mask`` lets the mask be resized (``mask_scale_mode``: 'nearest', 'bilinear', ...,
      or 'maxpool') to the discriminator's output size; without it the sizes must match.
    * ``extra_mask_weight_for_gen`` > 0 (with ``mask_as_fake_target``) weights the generator term by
      ``1 + extra * mask``; ``use_unmasked_for_gen`` / ``use_unmasked_for_discr`` False restrict the
      generator / the discriminator's fake term to the holes. Defaults are LaMa's.
    """

    def __init__(self, loss_weight: float = 10.0, gp_coef: float = 0.001, mask_as_fake_target: bool = True,
                 allow_scale_mask: bool = True, mask_scale_mode: str = "nearest",
                 extra_mask_weight_for_gen: float = 0.0, use_unmasked_for_gen: bool = True,
                 use_unmasked_for_discr: bool = True):
        super().__init__()
        if use_unmasked_for_discr and not use_unmasked_for_gen:
            raise ValueError("use_unmasked_for_discr needs use_unmasked_for_gen: otherwise the discriminator learns "
                             "a difference the generator is never asked to remove")
        if mask_as_fake_target and not use_unmasked_for_discr:
            raise ValueError("mask_as_fake_target needs use_unmasked_for_discr")
        self.loss_weight = loss_weight
        self.gp_coef = gp_coef
        self.mask_as_fake_target = mask_as_fake_target
        self.allow_scale_mask = allow_scale_mask
        self.mask_scale_mode = mask_scale_mode
        self.extra_mask_weight_for_gen = extra_mask_weight_for_gen
        self.use_unmasked_for_gen = use_unmasked_for_gen
        self.use_unmasked_for_discr = use_unmasked_for_discr

    def resize_mask(self, mask, size):
        if mask is None:
            raise ValueError("this adversarial loss setting needs the inpainting mask")
        if tuple(mask.shape[-2:]) == tuple(size):
            return mask
        if not self.allow_scale_mask:
            raise ValueError(f"mask is {tuple(mask.shape[-2:])} but the discriminator output is {tuple(size)}; "
                             f"set allow_scale_mask: true to resize it")
        if self.mask_scale_mode == "maxpool":
            return F.adaptive_max_pool2d(mask, size)
        return F.interpolate(mask, size=size, mode=self.mask_scale_mode)

    def generator_loss(self, fake_pred, mask=None):
        loss = F.softplus(-fake_pred)
        if not self.use_unmasked_for_gen:
            loss = loss * self.resize_mask(mask, fake_pred.shape[-2:])
        elif self.mask_as_fake_target and self.extra_mask_weight_for_gen > 0:
            loss = loss * (1 + self.extra_mask_weight_for_gen * self.resize_mask(mask, fake_pred.shape[-2:]))
        return self.loss_weight * loss.mean()

    def discriminator_loss(self, discriminator: nn.Module, real, fake, mask=None):
        """Run ``discriminator`` on ``real`` and (detached) ``fake``; returns (loss, logging dict)."""
        real = real.detach().requires_grad_(True)
        real_pred = discriminator(real)[0]
        fake_pred = discriminator(fake.detach())[0]
        penalty = self.r1_penalty(real_pred, real) if self.gp_coef > 0 else real_pred.new_zeros(())
        fake_loss = F.softplus(fake_pred)
        if self.mask_as_fake_target or not self.use_unmasked_for_discr:
            hole = self.resize_mask(mask, fake_pred.shape[-2:])
            fake_loss = fake_loss * hole
            if self.mask_as_fake_target:
                fake_loss = fake_loss + (1 - hole) * F.softplus(-fake_pred)
        loss = F.softplus(-real_pred).mean() + self.gp_coef * penalty + fake_loss.mean()
        return loss, {"d_real": real_pred.detach().mean(), "d_fake": fake_pred.detach().mean(),
                      "d_r1": penalty.detach()}

    @staticmethod
    def r1_penalty(real_pred, real):
        """Batch mean of the squared gradient norm of D's summed output w.r.t. the real images."""
        if not torch.is_grad_enabled():
            return real_pred.new_zeros(())
        return r1_penalty(real_pred, real)


# ------------------------------------------------------------------------------------------ ResNetPL
class _Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1, x4 expansion); key names as in the CSAIL segmentation encoder."""

    def __init__(self, c_in, planes, stride=1, dilation=1, downsample=False):
        super().__init__()
        c_out = planes * 4
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
                           if downsample else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet50Dilated(nn.Module):
    """The ADE20k segmentation encoder LaMa's ResNetPL uses (CSAIL ``resnet50dilated``, dilate scale 8).

    A ResNet-50 with a three-conv stem (3->64 stride 2, 64->64, 64->128) and layers 3 and 4 dilated
    (2 and 4) instead of strided, so its features stay at 1/8 resolution. ``forward`` returns the
    outputs of layers 1-4. Keys match ``encoder_epoch_20.pth``.
    """

    def __init__(self):
        super().__init__()
        stem = [(3, 64, 2), (64, 64, 1), (64, 128, 1)]
        for i, (c_in, c_out, stride) in enumerate(stem, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False))
            self.add_module(f"bn{i}", nn.BatchNorm2d(c_out))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 128
        # (planes, blocks, stride of the first block, dilation of the first block, dilation of the rest)
        plan = [(64, 3, 1, 1, 1), (128, 4, 2, 1, 1), (256, 6, 1, 1, 2), (512, 3, 1, 2, 4)]
        for i, (planes, blocks, stride, first_dilation, dilation) in enumerate(plan, start=1):
            layer = [_Bottleneck(c_in, planes, stride, first_dilation, downsample=True)]
            layer += [_Bottleneck(planes * 4, planes, 1, dilation) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*layer))
            c_in = planes * 4

    def forward(self, x):
        for i in (1, 2, 3):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = self.maxpool(x)
        features = []
        for i in (1, 2, 3, 4):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


ADE20K_ENCODER = "ade20k/ade20k-resnet50dilated-ppm/encoder_epoch_20.pth"


def resolve_ade20k_encoder(weights_path: str | os.PathLike | None) -> Path:
    """The encoder file from a path to it or to the folder LaMa expects it under (its ``TORCH_HOME``)."""
    hint = ("ResNetPL needs the ADE20k ResNet50-dilated encoder weights, encoder_epoch_20.pth, from "
            "http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-resnet50dilated-ppm/ (as in LaMa's README). "
            "Download it yourself and set weights_path to the file, or to a folder holding " + ADE20K_ENCODER)
    if not weights_path:
        raise FileNotFoundError(f"no weights_path given. {hint}")
    path = Path(weights_path).expanduser()
    if path.is_dir():
        path = path / ADE20K_ENCODER
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. {hint}")
    return path


@LOSS_REGISTRY.register()
class ResNetPLLoss(nn.Module):
    """LaMa's high-receptive-field perceptual loss: ``loss_weight * sum_l MSE(phi_l(pred), phi_l(target))``
    over the four stages of a frozen ADE20k ResNet50-dilated, inputs in [0, 1] normalised with ImageNet
    statistics. The network always stays in eval mode (frozen batch-norm statistics).

    ``random_weights=True`` skips loading (for tests and smoke runs only).
    """

    def __init__(self, loss_weight: float = 30.0, weights_path: str | None = None, random_weights: bool = False):
        super().__init__()
        self.loss_weight = loss_weight
        self.encoder = ResNet50Dilated()
        if not random_weights:
            path = resolve_ade20k_encoder(weights_path)
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            missing, unexpected = self.encoder.load_state_dict(state, strict=False)
            if missing:
                raise RuntimeError(f"{path} is not the ADE20k ResNet50-dilated encoder: {len(missing)} missing "
                                   f"keys, e.g. {missing[:3]}")
        self.encoder.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, pred, target):
        pred_features = self.encoder((pred - self.mean) / self.std)
        with torch.no_grad():
            target_features = self.encoder((target - self.mean) / self.std)
        return self.loss_weight * sum(F.mse_loss(p, t) for p, t in zip(pred_features, target_features))
