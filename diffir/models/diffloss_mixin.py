"""Optional DiffLoss for any basicsr-style training model, switched on by ``train.diffloss_opt``.

A model that mixes this in calls :meth:`DiffLossMixin.init_diffloss` once its device is known and
adds :meth:`DiffLossMixin.diffloss_terms` to its loss. The prior lives inside the loss module, not in
``net_g``: basicsr saves and optimises only the networks, so the frozen prior never reaches a
restoration checkpoint or an optimiser.
"""
from __future__ import annotations

from copy import deepcopy

import torch
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger


class DiffLossMixin:
    """Adds ``self.cri_diffloss`` (None when the options have no ``diffloss_opt``)."""

    def init_diffloss(self, train_opt: dict) -> None:
        """Build self.cri_diffloss from train_opt['diffloss_opt'] (None when absent), moved to
        self.device, frozen, eval."""
        diffloss_opt = train_opt.get("diffloss_opt")
        if not diffloss_opt:
            self.cri_diffloss = None
            return
        diffloss_opt = deepcopy(dict(diffloss_opt))  # build_loss pops 'type'; keep the options intact
        diffloss_opt.setdefault("type", "DiffLoss")
        loss = build_loss(diffloss_opt).to(self.device)
        loss.requires_grad_(False)
        self.cri_diffloss = loss.eval()
        get_root_logger().info(f"DiffLoss on: {self.cri_diffloss.describe()}")

    def diffloss_terms(self, output, gt, loss_dict) -> torch.Tensor | float:
        """Weighted L_nat + L_sem for a batch (0 when DiffLoss is off); records loss_dict['l_nat'],
        loss_dict['l_sem']."""
        if getattr(self, "cri_diffloss", None) is None:
            return 0.0
        terms = self.cri_diffloss.terms(output, gt)
        loss_dict.update(terms)
        return terms["l_nat"] + terms["l_sem"]
