"""The benchmark suite: PSNR / SSIM / LPIPS / NIQE / FID on benchmark sets, the paper's numbers beside
ours, comparison crops and a stochasticity report. Command line: ``benchmarks/benchmark.py``."""
from ..metrics import LPIPSMetric, MissingWeightsError
from .paper import PAPER_SETS, find_paper_set
from .suite import Benchmark, BenchmarkSet, SetResult, list_samples, stochasticity, write_summary

__all__ = ["Benchmark", "BenchmarkSet", "LPIPSMetric", "MissingWeightsError", "PAPER_SETS", "SetResult",
           "find_paper_set", "list_samples", "stochasticity", "write_summary"]
