"""Image quality metrics: basicsr's PSNR / SSIM / NIQE with the papers' protocols, LPIPS, FID.

:mod:`.quality` holds the per-image metrics and the metric vocabulary used by the benchmark suite;
:mod:`.fid` the Inception features and Frechet distance (the inpainting metric), also used in
validation (``val.fid``). test.py's ``val.metrics`` reach basicsr's ``calculate_psnr`` /
``calculate_ssim`` through its registry, the same functions :func:`.quality.psnr` / :func:`.quality.ssim` call.
"""
from .quality import (DEFAULT_METRICS, HIGHER_IS_BETTER, IMAGE_METRICS, NEEDS_GT, SET_METRICS, FIDMetric,
                      LPIPSMetric, MissingWeightsError, niqe, psnr, ssim, tensor_psnr, to_uint8_rgb)

__all__ = ["DEFAULT_METRICS", "HIGHER_IS_BETTER", "IMAGE_METRICS", "NEEDS_GT", "SET_METRICS", "FIDMetric",
           "LPIPSMetric", "MissingWeightsError", "niqe", "psnr", "ssim", "tensor_psnr", "to_uint8_rgb"]
