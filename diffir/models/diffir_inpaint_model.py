"""DiffIR inpainting training: stage one and stage two with LaMa's losses, in the basicsr workflow.

The official inpainting code trains inside LaMa's Lightning trainer; these models reproduce it on top
of the generic DiffIR models (:class:`DiffIRS1Model`, :class:`DiffIRS2Model`), whose training step they
keep; what inpainting changes is in :class:`InpaintingMixin`:

* input ``cat(image * (1 - mask), mask)`` from :class:`InpaintingDataset`, output composited as
  ``mask * prediction + (1 - mask) * image`` for validation and saving (known pixels are kept exactly);
* generator loss = masked L1 (``pixel_opt: MaskedL1Loss``) + optional basicsr ``perceptual_opt``
  + non-saturating adversarial loss (``gan_opt: NonSaturatingR1Loss``) + discriminator feature matching
  (``feature_matching_opt``) + optional ResNetPL (``resnet_pl_opt``) [+ stage two's IPR loss ``kd_opt``];
  the losses and the discriminator see the raw prediction, as in the official code;
* the discriminator (``network_d``: NLayerDiscriminator) is updated after every generator step with
  its own optimiser (``optim_d``), on the same prediction
  (:class:`~diffir.models.adversarial.InpaintingAdversarialTraining`);
* no EMA unless ``ema_decay`` is set (LaMa's generator averaging is off by default);
* optional FID in validation: ``val.fid: {weights_path: ...}`` next to ``val.metrics``.

Stage two: the DIRformer starts from the stage-one checkpoint (``pretrain_network_g`` with
``strict_load_g: false``), the frozen stage-one CPEN gives the target IPR, and everything trains jointly
(the official inpainting configs have no encoder phase; ``encoder_iter`` still works if set).
"""
from __future__ import annotations

from collections import OrderedDict

from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from ..inpainting import composite
from ..metrics.fid import FIDAccumulator, InceptionFeatures, check_weights_path
from .adversarial import InpaintingAdversarialTraining
from .diffir_s1_model import DiffIRS1Model
from .diffir_s2_model import DiffIRS2Model


class InpaintingMixin:
    """What both inpainting stages change in the generic DiffIR models: masked batches (the masked L1
    loss and the discriminator read the mask), LaMa's adversarial losses, compositing and FID in validation."""

    batch_keys = ("lq", "gt", "mask")
    adversarial_training = InpaintingAdversarialTraining

    def __init__(self, opt):
        if opt.get("is_train"):  # fail now, not after building the networks or at the first validation
            pixel_type = (opt["train"].get("pixel_opt") or {}).get("type")
            if pixel_type != "MaskedL1Loss":
                raise ValueError(f"inpainting models need train.pixel_opt of type MaskedL1Loss (official: "
                                 f"weight_known 10, weight_missing 0), got {pixel_type!r}")
            fid_opt = (opt.get("val") or {}).get("fid")
            if fid_opt and not fid_opt.get("random_weights"):
                check_weights_path(fid_opt.get("weights_path"))
        super().__init__(opt)

    # ------------------------------------------------------------------ validation
    def test(self):
        super().test()
        masked_image, mask = self.lq[:, :3], self.lq[:, 3:]
        self.output = composite(self.output, masked_image, mask)
        if getattr(self, "fid_accumulator", None) is not None and hasattr(self, "gt"):
            self.fid_accumulator.update(self.output, self.gt)

    def get_current_visuals(self):
        visuals = OrderedDict(lq=self.lq[:, :3].detach().cpu(), result=self.output.detach().cpu())
        if hasattr(self, "gt"):
            visuals["gt"] = self.gt.detach().cpu()
        return visuals

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        fid_opt = self.opt["val"].get("fid")
        if fid_opt:
            if self.opt["val"].get("metrics") is None:
                raise ValueError("val.fid is reported with the other validation metrics: add val.metrics "
                                 "(e.g. psnr) too")
            if getattr(self, "fid_accumulator", None) is None:
                self.fid_accumulator = FIDAccumulator(InceptionFeatures(**fid_opt), self.device)
            self.fid_accumulator.reset()
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        accumulator = getattr(self, "fid_accumulator", None)
        if accumulator is None or not accumulator.fake:
            return super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if accumulator.num_images < 2:
            get_root_logger().warning(f"FID skipped for {dataset_name}: it needs at least 2 images")
            accumulator.reset()
            return super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self.metric_results["fid"] = accumulator.compute()
        self.best_metric_results[dataset_name].setdefault("fid", dict(better="lower", val=float("inf"), iter=-1))
        self._update_best_metric_result(dataset_name, "fid", self.metric_results["fid"], current_iter)
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        del self.metric_results["fid"]  # basicsr would average a stale value into the next validation
        accumulator.reset()


@MODEL_REGISTRY.register()
class DiffIRInpaintS1Model(InpaintingMixin, DiffIRS1Model):
    """Stage one: DiffIRS1 (CPEN_S1 sees the masked input and the ground truth) with LaMa's losses."""


@MODEL_REGISTRY.register()
class DiffIRInpaintS2Model(InpaintingMixin, DiffIRS2Model):
    """Stage two: DiffIRS2 trained against the frozen stage-one CPEN, with LaMa's losses + the IPR loss."""
