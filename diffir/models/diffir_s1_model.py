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
        gt = batch.get("gt_usm", batch["gt"]) if self.opt.get("l1_gt_usm") else batch["gt"]
        output, _ = self.net_g(batch["lq"], gt)
        return self.restoration_losses(output, gt, OrderedDict())

    def restoration_losses(self, output, gt, loss_dict, percep_gt=None):
        """Pixel + perceptual + DiffLoss terms shared by every DiffIR training model."""
        l_total = 0
        if self.cri_pix:
            loss_dict["l_pix"] = self.cri_pix(output, gt)
            l_total = l_total + loss_dict["l_pix"]
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, gt if percep_gt is None else percep_gt)
            for name, value in (("l_percep", l_percep), ("l_style", l_style)):
                if value is not None:
                    loss_dict[name] = value
                    l_total = l_total + value
        l_total = l_total + self.diffloss_terms(output, gt, loss_dict)
        return l_total, loss_dict, output

    def run_network_eval(self, net, lq):
        if not hasattr(self, "gt"):
            raise ValueError("stage one needs ground truth to run (CPEN_S1 reads it); this dataset has none")
        scale = self.get_bare_model(net).scale
        gt, _ = pad_to_multiple(self.gt, self.size_multiple() * scale)
        return net(lq, gt)
