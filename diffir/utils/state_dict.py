"""Describing why a checkpoint does not fit a network, briefly enough to read."""
from __future__ import annotations

from collections.abc import Mapping


def mismatch_lines(expected: Mapping, given: Mapping, shown: int = 5) -> list[str]:
    """One line per kind of mismatch between a network's state dict (``expected``) and a checkpoint's
    (``given``): missing keys, unexpected keys and shape differences, each with at most ``shown``
    examples. Empty when the checkpoint fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    resized = [f"{k}: checkpoint {tuple(given[k].shape)} vs network {tuple(v.shape)}"
               for k, v in expected.items() if k in given and given[k].shape != v.shape]
    lines = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", resized)):
        if items:
            more = f" ... (+{len(items) - shown} more)" if len(items) > shown else ""
            lines.append(f"{len(items)} {label} key(s): {', '.join(items[:shown])}{more}")
    return lines
