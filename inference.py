"""Restore images with DiffIR: ``python inference.py -i photo.png -o results/`` (see ``--help``).

A thin shell around :class:`diffir.Restorer`; the command line lives in :mod:`diffir.cli`.
"""
import sys

import diffir  # noqa: F401  (before basicsr: installs the torchvision alias basicsr needs)
from diffir.cli import main

if __name__ == "__main__":
    sys.exit(main())
