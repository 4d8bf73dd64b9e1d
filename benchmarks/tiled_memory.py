"""Peak memory of a tiled restore as the image grows, against the growth of the output's own bytes.

Runs ``inference.py -i IMAGE -o OUT --tile T`` in a child process per size (a bundled photo resized
to each size, x4 demo model by default) and reads the child's peak resident set (``os.wait4``, the
figure ``/usr/bin/time -v`` reports as "Maximum resident set size"). With tiles, float memory is
bounded by the tile, so the peak should grow like the 8-bit output image that is held whole (plus
the input image itself), not like a float canvas. Prints per size the median peak over
``--repeats`` runs, its growth over the smallest size, and that growth divided by the growth of the
output's bytes. The last line is machine-readable::

    tiled_memory peak_mb=<largest size's peak> growth_ratio=<peak growth / output bytes growth>

Example (about 4 minutes on 2 cores)::

    python benchmarks/tiled_memory.py --sizes 1000x750,2000x1500 --tile 256
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(command: list[str]) -> float:
    """Run ``command`` and return its peak resident set in MB (Linux reports ru_maxrss in kB)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)  # reaped here, with its own resource usage
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.decode()}")
    return usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000x750,2000x1500", help="input sizes WxH, smallest first")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--model", default="demo-sr-x4")
    parser.add_argument("--scale", type=int, default=4, help="the model's scale (for the output's bytes)")
    parser.add_argument("--photo", default=str(ROOT / "demo_data" / "train" / "forest_stream.png"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    photo = cv2.imread(args.photo)
    if photo is None:
        parser.error(f"cannot read the photo {args.photo}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            image = Path(tmp) / f"in_{width}x{height}.png"
            cv2.imwrite(str(image), cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC))
            peaks = []
            for repeat in range(args.repeats):
                out = Path(tmp) / f"out_{width}x{height}_{repeat}"
                peaks.append(peak_rss_mb([sys.executable, str(ROOT / "inference.py"), "-i", str(image), "-o", str(out),
                                          "-m", args.model, "--tile", str(args.tile)]))
            output_mb = width * height * args.scale ** 2 * 3 / 2 ** 20
            rows.append((f"{width}x{height}", output_mb, statistics.median(peaks), peaks))
    base_output, base_peak = rows[0][1], rows[0][2]
    print(f"{'input':>10} {'output MB':>10} {'peak MB':>9} {'growth MB':>10} {'/ output growth':>16}  runs")
    for name, output_mb, peak, peaks in rows:
        growth = peak - base_peak
        ratio = growth / (output_mb - base_output) if output_mb > base_output else float("nan")
        print(f"{name:>10} {output_mb:10.0f} {peak:9.0f} {growth:10.0f} {ratio:16.2f}  "
              + ", ".join(f"{p:.0f}" for p in peaks))
    last_growth_ratio = (rows[-1][2] - base_peak) / (rows[-1][1] - base_output) if len(rows) > 1 else float("nan")
    print(f"tiled_memory peak_mb={rows[-1][2]:.0f} growth_ratio={last_growth_ratio:.2f}")


if __name__ == "__main__":
    main()
