"""FID: Frechet distance between Inception-v3 pool features of two image sets (the inpainting metric).

The paper's numbers come from LaMa's evaluator, which is pytorch-fid: the TF-ported "FID Inception"
(weights ``pt_inception-2015-12-05-6726825d.pth``), 2048-d pool3 features of images resized to
299x299 (bilinear) and scaled to [-1, 1]. Both weight files this module accepts are local files
(nothing is downloaded):

* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (1008-class head): the FID network, with
  pytorch-fid's block changes (average pools that exclude padding, a max pool in the last block).
  Use it for numbers comparable with published FIDs.
* torchvision's ``inception_v3_google-*.pth``: the standard torchvision Inception-v3. Its FIDs are
  not comparable with published ones.

``random_weights=True`` builds an untrained network, for tests only.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.archs.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
from torchvision.models import inception as tv_inception

FEATURE_DIM = 2048
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_HINT = (f"FID needs Inception-v3 weights from a local file: pytorch-fid's {FID_WEIGHTS} (released with "
                f"pytorch-fid, github.com/mseitzer/pytorch-fid/releases; the one to use for published-comparable "
                f"FIDs) or torchvision's inception_v3_google-*.pth. Download it and pass its path.")


def _build_inception(fid_variant: bool, init_weights: bool) -> tv_inception.Inception3:
    # basicsr's FIDInception* blocks are pytorch-fid's changes to torchvision's, which the TF graph behind
    # published FIDs computes
    blocks = [tv_inception.BasicConv2d, tv_inception.InceptionA, tv_inception.InceptionB, tv_inception.InceptionC,
              tv_inception.InceptionD, tv_inception.InceptionE, tv_inception.InceptionAux]
    if fid_variant:
        blocks[1], blocks[3], blocks[5] = FIDInceptionA, FIDInceptionC, FIDInceptionE_1
    net = tv_inception.Inception3(num_classes=1008 if fid_variant else 1000, aux_logits=False,
                                  transform_input=False, inception_blocks=blocks, init_weights=init_weights)
    if fid_variant:
        net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class InceptionFeatures(nn.Module):
    """Images (B, 3, H, W) RGB in [0, 1] -> (B, 2048) Inception-v3 pool features.

    Args:
        weights_path: pytorch-fid's or torchvision's Inception-v3 weights (see the module docstring).
        random_weights: build an untrained FID network instead (tests only).
        resize_to: input size; 299 as in pytorch-fid (smaller sizes >= 75 only to make tests fast).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, random_weights: bool = False,
                 resize_to: int = 299):
        super().__init__()
        if random_weights:
            self.net = _build_inception(fid_variant=True, init_weights=False)
            for module in self.net.modules():  # He init keeps activations O(1) through the eval-mode batch norms
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            self.source = "random weights"
        else:
            state = _load_inception_state(weights_path)
            fid_variant = state["fc.weight"].shape[0] == 1008
            self.net = _build_inception(fid_variant, init_weights=False)
            self.net.load_state_dict(state)
            self.source = f"{Path(weights_path).name} ({'FID' if fid_variant else 'torchvision'} Inception)"
        self.net.fc = nn.Identity()  # the pool features are what FID needs
        self.resize_to = resize_to
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)  # batch-norm statistics are part of the metric: never update them

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (B, 3, H, W) RGB images in [0, 1], got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.resize_to, self.resize_to):
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        return self.net(2 * x - 1)


def check_weights_path(weights_path) -> Path:
    """The Inception weights file, or FileNotFoundError saying which file to get."""
    if not weights_path:
        raise FileNotFoundError(f"no Inception weights given. {WEIGHTS_HINT}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. {WEIGHTS_HINT}")
    return path


def _load_inception_state(weights_path) -> dict:
    path = check_weights_path(weights_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    if "fc.weight" not in state or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(f"{path} is not an Inception-v3 state dict (no fc / Mixed_7c keys). {WEIGHTS_HINT}")
    return state


# ------------------------------------------------------------------------------------ the distance
def _feature_matrix(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (N >= 2, D) float64 feature matrix (rows = samples)."""
    features = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a (N >= 2, D) feature matrix, got shape {features.shape}")
    return features


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples) in float64."""
    features = _feature_matrix(features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _trace_sqrt_product_scipy(sigma1, sigma2, eps=1e-6):
    """tr(sqrtm(sigma1 @ sigma2)) as pytorch-fid computes it (scipy.linalg.sqrtm with an eps retry)."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise np.linalg.LinAlgError(f"sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g}): the "
                                        f"covariances are too ill-conditioned (fewer images than feature dimensions?)")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(sigma1, sigma2):
    """tr(sqrtm(sigma1 @ sigma2)) = sum of sqrt(eigenvalues of s1^1/2 sigma2 s1^1/2), which is symmetric PSD."""
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "auto") -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^1/2).

    ``method``: 'scipy' (pytorch-fid's computation), 'eigh' (an eigen-decomposition of the symmetric
    sigma1^1/2 sigma2 sigma1^1/2: no scipy needed, and stable when the covariances are singular), or
    'auto' = scipy when installed and successful, else eigh.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: mu {mu1.shape} / {mu2.shape}, "
                         f"sigma {sigma1.shape} / {sigma2.shape}")
    if method not in ("auto", "scipy", "eigh"):
        raise ValueError(f"method must be 'auto', 'scipy' or 'eigh', got {method!r}")
    tr_covmean = None
    if method in ("auto", "scipy"):
        try:
            tr_covmean = _trace_sqrt_product_scipy(sigma1, sigma2)
        except ImportError:
            if method == "scipy":
                raise
        except np.linalg.LinAlgError:
            if method == "scipy":
                raise
            warnings.warn("scipy's sqrtm failed on ill-conditioned covariances; using the eigen-decomposition",
                          stacklevel=2)
    if tr_covmean is None:
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(fake, real, method: str = "auto") -> float:
    """FID between two feature matrices (rows = images).

    ``method`` 'lowrank' never forms the D x D covariances: with S1 = X^T X and S2 = Y^T Y (centred
    features scaled by 1/sqrt(n - 1)), tr((S1 S2)^1/2) is the sum of the singular values of X Y^T, exact
    and cheap when there are fewer images than feature dimensions (2048), which is when the covariances
    are singular and sqrtm is least accurate. 'scipy' / 'eigh' go through :func:`frechet_distance`.
    'auto' = 'lowrank' when both sets have fewer images than dimensions, else :func:`frechet_distance`'s auto.
    """
    fake, real = _feature_matrix(fake), _feature_matrix(real)
    if fake.shape[1] != real.shape[1]:
        raise ValueError(f"need two feature matrices of the same D, got {fake.shape} and {real.shape}")
    if method == "auto":
        method = "lowrank" if max(len(fake), len(real)) < fake.shape[1] else "auto"
    if method != "lowrank":
        return frechet_distance(*feature_statistics(fake), *feature_statistics(real), method=method)
    mu1, mu2 = fake.mean(axis=0), real.mean(axis=0)
    x = (fake - mu1) / np.sqrt(len(fake) - 1)
    y = (real - mu2) / np.sqrt(len(real) - 1)
    tr_covmean = np.linalg.svd(x @ y.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (x * x).sum() + (y * y).sum() - 2 * tr_covmean)


class FIDAccumulator:
    """Collects Inception features of generated and reference images batch by batch; :meth:`compute` gives FID.

    >>> fid = FIDAccumulator(InceptionFeatures(weights_path))
    >>> for batch in loader: fid.update(inpainted, gt)
    >>> fid.compute()
    """

    def __init__(self, extractor: InceptionFeatures, device: torch.device | str | None = None):
        self.extractor = extractor
        self.device = torch.device(device) if device is not None else next(extractor.parameters()).device
        self.extractor.to(self.device)
        self.reset()

    def reset(self) -> None:
        self.fake, self.real = [], []

    @property
    def num_images(self) -> int:
        """Generated images seen so far."""
        return sum(f.shape[0] for f in self.fake)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images.to(self.device)).double().cpu()

    def update(self, fake: torch.Tensor, real: torch.Tensor | None = None) -> None:
        self.fake.append(self.features(fake))
        if real is not None:
            self.real.append(self.features(real))

    def compute(self, method: str = "auto") -> float:
        """FID of everything seen since the last reset (``method``: see :func:`fid_from_features`)."""
        if not self.fake or not self.real:
            raise ValueError("FID needs features of both the generated and the reference images")
        return fid_from_features(torch.cat(self.fake), torch.cat(self.real), method=method)
