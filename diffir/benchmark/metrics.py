"""Moved to :mod:`diffir.metrics`; kept only for imports not yet updated (benchmarks/speed.py)."""
from ..metrics import tensor_psnr  # noqa: F401
