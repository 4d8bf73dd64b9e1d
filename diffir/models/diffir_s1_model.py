"""Stage one: train CPEN_S1 and the DIRformer together on (LQ, GT)."""
from collections import OrderedDict

from basicsr.utils.registry import MODEL_REGISTRY

from ..utils.padding import pad_to_multiple
from .base import DiffIRBaseModel
from .synthetic_degradation import SyntheticDegradationMixin


@MODEL_REGISTRY.register()
class DiffIRS1Model(SyntheticDegradationMixin, DiffIRBaseModel):
    """DiffIRS1 fed (LQ, GT); pixel loss (+ optional perceptual loss and DiffLoss); EMA; validation."""

    def compute_losses(self, batch, current_iter):
        output, _ = self.net_g(batch["lq"], self.l1_target(batch))
        loss_dict = OrderedDict()
        return self.image_losses(output, batch, loss_dict), loss_dict, output

    def run_network_eval(self, net, lq):
        if not hasattr(self, "gt"):
            raise ValueError("stage one needs ground truth to run (CPEN_S1 reads it); this dataset has none")
        scale = self.get_bare_model(net).scale
        gt, _ = pad_to_multiple(self.gt, self.size_multiple() * scale)
        return net(lq, gt)
