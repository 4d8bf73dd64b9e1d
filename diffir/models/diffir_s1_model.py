"""Stage one: train CPEN_S1 and the DIRformer together on (LQ, GT)."""
from basicsr.utils.registry import MODEL_REGISTRY

from ..utils.padding import pad_to_multiple
from .base import DiffIRBaseModel


@MODEL_REGISTRY.register()
class DiffIRS1Model(DiffIRBaseModel):
    """DiffIRS1 fed (LQ, GT); pixel loss (+ optional perceptual loss and DiffLoss); EMA; validation."""

    def forward_train(self, batch, current_iter):
        output, _ = self.net_g(batch["lq"], self.l1_target(batch))
        return output, None

    def run_network_eval(self, net, lq):
        if not hasattr(self, "gt"):
            raise ValueError("stage one needs ground truth to run (CPEN_S1 reads it); this dataset has none")
        scale = self.get_bare_model(net).scale
        gt, _ = pad_to_multiple(self.gt, self.size_multiple() * scale)
        return net(lq, gt)
