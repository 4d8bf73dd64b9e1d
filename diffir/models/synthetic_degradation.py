"""Training batches synthesised on the fly with the Real-ESRGAN degradation (real-world SR)."""


class SyntheticDegradationMixin:
    """With ``high_order_degradation: true`` (the real-world SR configs), training batches from
    RealESRGANDataset (GT + blur kernels) are degraded on the model's device into (lq, gt, gt_usm);
    validation and every other dataset use the LQ images as given."""

    def feed_data(self, data):
        if self.is_train and self.opt.get("high_order_degradation", False) and "kernel1" in data:
            if not hasattr(self, "degradation"):
                from ..data.degradation import RealESRGANDegradation  # only real-world SR needs it

                self.degradation = RealESRGANDegradation(self.opt, self.device)
            self.lq, self.gt, self.gt_usm = self.degradation(data)
            return
        super().feed_data(data)
