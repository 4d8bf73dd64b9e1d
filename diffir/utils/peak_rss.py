"""Peak resident memory of one call, for the CPU benchmarks (Linux ``/proc``; NaN elsewhere)."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_with_peak_rss(run: Callable[[], T]) -> tuple[T, float]:
    """``run()``'s result and how far the resident set grew above its live baseline during it, in MB."""
    if not os.path.exists("/proc/self/statm"):
        return run(), float("nan")
    gc.collect()
    with contextlib.suppress(OSError):  # hand freed memory back to the OS so the baseline is what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():  # torch kernels release the GIL, so this thread keeps sampling during the run
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        out = run()
    finally:
        done.set()
        sampler.join()
    return out, max(0, peak[0] - base) / 2 ** 20
