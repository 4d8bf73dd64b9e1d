"""KDLoss: the stage-two IPR loss (the paper's L_diff)."""
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class KDLoss(nn.Module):
    """Distance between the stage-two IPR estimate and the (detached) stage-one IPR.

    Returns ``(kl, l1)``, each times ``loss_weight``. As in the official code only the L1 term is
    optimised (it is the paper's L_diff); the temperature-softened KL is returned for logging.
    """

    def __init__(self, loss_weight: float = 1.0, temperature: float = 0.15):
        super().__init__()
        self.loss_weight = loss_weight
        self.temperature = temperature

    def forward(self, ipr_s2, ipr_s1):
        target = ipr_s1.detach()
        kl = F.kl_div(F.log_softmax(ipr_s2 / self.temperature, dim=1), F.softmax(target / self.temperature, dim=1),
                      reduction="batchmean")
        return self.loss_weight * kl, self.loss_weight * F.l1_loss(ipr_s2, target)
