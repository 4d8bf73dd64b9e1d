"""Train any restoration network from the registry on (LQ, GT) pairs, optionally with DiffLoss.

DiffLoss is architecture-agnostic (the paper adds it to existing networks), so this model is
basicsr's SRModel recipe (pixel + optional perceptual loss, EMA, validation) on diffir's training
base (atomic checkpoints, non-finite-loss guard, gradient clipping, accumulation, bf16 autocast).
Adding DiffLoss to e.g. basicsr's SwinIR is a YAML change::

    model_type: RestorationModel
    network_g: {type: SwinIR, ...}
    train:
      pixel_opt: {type: L1Loss, loss_weight: 1.0}
      diffloss_opt: {prior_path: pretrained/256x256_diffusion_uncond.pt}
"""
from __future__ import annotations

from basicsr.utils.registry import MODEL_REGISTRY

from .base import DiffIRBaseModel


@MODEL_REGISTRY.register()
class RestorationModel(DiffIRBaseModel):
    """net_g(lq) -> restored image; loss = pixel + perceptual + DiffLoss (each optional, one needed)."""

    def forward_train(self, batch, current_iter):
        output = self.net_g(batch["lq"])
        if output.shape != batch["gt"].shape:
            raise ValueError(f"network_g output {tuple(output.shape)} does not match the GT patch "
                             f"{tuple(batch['gt'].shape)}; check network_g's upscale and the dataset's scale")
        return output, None
