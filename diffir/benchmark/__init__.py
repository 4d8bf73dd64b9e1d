"""The benchmark suite: PSNR / SSIM / LPIPS / NIQE / FID on benchmark sets, with a baseline (bicubic or
the LQ input) and the paper's numbers, comparison crops and a stochasticity report. Command line:
``benchmarks/benchmark.py``.

The names below load on first use (module ``__getattr__``), so that the command line's ``--help``
does not wait for torch.
"""
import importlib

_SOURCES = {"LPIPSMetric": "..metrics", "MissingWeightsError": "..metrics", "PAPER_SETS": ".paper",
            "find_paper_set": ".paper", "Benchmark": ".suite", "BenchmarkSet": ".suite", "SetResult": ".suite",
            "list_samples": ".suite", "stochasticity": ".suite", "write_summary": ".suite"}

__all__ = list(_SOURCES)


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(_SOURCES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
