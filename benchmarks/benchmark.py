"""Benchmark a DiffIR model on standard sets (see ``--help`` and diffir/benchmark/cli.py).

    python benchmarks/benchmark.py -m sisr-gan-x4 --lq datasets/Set14/LR --gt datasets/Set14/HR --name Set14
"""
import sys

import diffir  # noqa: F401  (before basicsr: installs the torchvision alias basicsr needs)
from diffir.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
