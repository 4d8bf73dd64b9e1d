"""Inference speed and memory of a DiffIR stage-two model, side by side in one run.

For each device (the CPU, and CUDA when present) and input size it prints:

* latency (batch 1) and throughput (images/s at --batch) of a whole restoration;
* the share of that time spent estimating the IPR (CPEN_S2 + the 4-step diffusion) vs in the DIRformer;
* peak memory of an untiled and a tiled run (--tile), their ratio, and the PSNR of the tiled output
  against the untiled one (the seam / global-attention error of tiling).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the loaded model; on the CPU, the
peak growth of the resident set size during one restoration (sampled every millisecond from
/proc, Linux only), in a fresh child process per configuration so that runs do not share freed memory.

The network is an official configuration (--preset, random weights: speed does not depend on the
values) or a checkpoint (-m). Examples::

    python benchmarks/inference_speed.py                           # sr-x4 preset, CPU sizes 32 and 64
    python benchmarks/inference_speed.py --preset deblur --sizes 128,256,512 --tile 128
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import diffir  # noqa: F401  (before basicsr: installs the torchvision alias basicsr needs)
import torch

from diffir.archs.detect import build_network
from diffir.metrics import tensor_psnr
from diffir.inpainting import prepare_inpainting_input
from diffir.restorer import Restorer, initial_noise
from diffir.utils.peak_rss import run_with_peak_rss
from diffir.zoo import PRESETS

DEFAULT_SIZES = {"cpu": [32, 64], "cuda": [128, 256, 512, 1024]}


def build_restorer(args, device: str, tile: int | None) -> Restorer:
    if args.model:
        return Restorer.from_pretrained(args.model, device=device, tile=tile, tile_overlap=args.tile_overlap,
                                        precision="fp16" if args.half else "fp32")
    torch.manual_seed(0)
    return Restorer(build_network(PRESETS[args.preset]), device=device, tile=tile, tile_overlap=args.tile_overlap,
                    precision="fp16" if args.half else "fp32")


def test_image(restorer: Restorer, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A smooth synthetic image (gradients and low-frequency waves), and an inpainting mask if needed."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    channels = [0.5 + 0.4 * torch.sin(6 * x + 2 * y + phase) * torch.cos(4 * y - phase) for phase in (0.0, 1.0, 2.0)]
    image = torch.stack(channels)[None].repeat(batch, 1, 1, 1)
    mask = None
    if restorer.task == "inpaint":
        mask = torch.zeros(batch, 1, size, size)
        mask[..., size // 4: size // 2, size // 3: 2 * size // 3] = 1
    return image, mask


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mb(args, device: str, size: int, tile: int | None) -> float:
    """Peak memory of one restoration, in MB."""
    if device == "cpu":
        command = [sys.executable, __file__, "--measure-rss", str(size), "--tile", str(tile or 0),
                   "--tile-overlap", str(args.tile_overlap), "--preset", args.preset]
        if args.model:
            command += ["-m", args.model]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]
    restorer = build_restorer(args, device, tile)
    image, mask = test_image(restorer, 1, size)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(restorer.device)
    base = torch.cuda.memory_allocated(restorer.device)
    restorer.restore_tensor(image, mask, initial_noise(1, 0))
    synchronize(restorer.device)
    return (torch.cuda.max_memory_allocated(restorer.device) - base) / 2 ** 20


def measure_rss(args) -> None:
    """Child process: peak RSS growth (MB) during one CPU restoration, printed as JSON (Linux /proc)."""
    restorer = build_restorer(args, "cpu", args.tile or None)
    image, mask = test_image(restorer, 1, args.measure_rss)
    _, peak_mb = run_with_peak_rss(lambda: restorer.restore_tensor(image, mask, initial_noise(1, 0)))
    print(json.dumps({"peak_mb": peak_mb}))


def run_device(args, device: str) -> list[dict]:
    restorer = build_restorer(args, device, None)
    tiled = build_restorer(args, device, args.tile)
    rows = []
    for size in args.sizes or DEFAULT_SIZES[restorer.device.type]:
        image, mask = test_image(restorer, 1, size)
        noise = initial_noise(1, 0)
        latency = timed(lambda image=image, mask=mask, noise=noise: restorer.restore_tensor(image, mask, noise),
                        restorer.device, args.repeats)
        batch_image, batch_mask = test_image(restorer, args.batch, size)
        batch_noise = initial_noise(args.batch, 0)
        batch_time = timed(lambda image=batch_image, mask=batch_mask, noise=batch_noise:
                           restorer.restore_tensor(image, mask, noise), restorer.device, args.repeats)
        # the two parts of a restoration, on the padded network input
        net_input = image if mask is None else prepare_inpainting_input(image, mask)
        net_input, device_noise = net_input.to(restorer.device), noise.to(restorer.device)
        with torch.no_grad():
            ipr = restorer.net.estimate_ipr(net_input, device_noise)
            ipr_time = timed(lambda net_input=net_input, noise=device_noise:
                             restorer.net.estimate_ipr(net_input, noise), restorer.device, args.repeats)
            g_time = timed(lambda net_input=net_input, ipr=ipr: restorer.net.restore_with_ipr(net_input, ipr),
                           restorer.device, args.repeats)
        untiled_mb = peak_memory_mb(args, device, size, None)
        tiled_mb = peak_memory_mb(args, device, size, args.tile)
        untiled_out = restorer.restore_tensor(image, mask, noise).cpu()
        tiled_out = tiled.restore_tensor(image, mask, noise).cpu()
        rows.append({
            "device": restorer.device.type, "size": size, "latency_ms": 1000 * latency,
            "throughput": args.batch / batch_time, "ipr_share": ipr_time / (ipr_time + g_time),
            "untiled_mb": untiled_mb, "tiled_mb": tiled_mb, "tiled_psnr": tensor_psnr(tiled_out, untiled_out),
        })
        print_row(rows[-1], args)
    return rows


def print_header(args) -> None:
    print(f"{'device':>6} {'size':>5} {'latency ms':>11} {f'img/s (b={args.batch})':>14} {'IPR %':>6} "
          f"{'G %':>6} {'peak MB':>9} {f'tiled {args.tile} MB':>13} {'ratio':>6} {'tiled PSNR dB':>14}")


def print_row(row: dict, args) -> None:
    ratio = row["tiled_mb"] / row["untiled_mb"] if row["untiled_mb"] > 0 else float("nan")
    print(f"{row['device']:>6} {row['size']:>5} {row['latency_ms']:>11.1f} {row['throughput']:>14.2f} "
          f"{100 * row['ipr_share']:>6.1f} {100 * (1 - row['ipr_share']):>6.1f} {row['untiled_mb']:>9.1f} "
          f"{row['tiled_mb']:>13.1f} {ratio:>6.2f} {row['tiled_psnr']:>14.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sr-x4", choices=sorted(PRESETS), help="official configuration")
    parser.add_argument("-m", "--model", help="checkpoint or zoo name instead of a preset")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        help="input sizes (square, LQ pixels); default per device")
    parser.add_argument("--tile", type=int, default=32, help="tile side for the tiled run (smaller than the sizes)")
    parser.add_argument("--tile-overlap", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="batch size for the throughput column")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CPU, then CUDA when present")
    parser.add_argument("--half", action="store_true", help="fp16 autocast")
    parser.add_argument("--measure-rss", type=int, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args()
    if args.measure_rss:
        measure_rss(args)
        return
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    print(f"model: {args.model or args.preset + ' preset (random weights)'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; IPR % = CPEN_S2 + diffusion, G % = DIRformer")
    print_header(args)
    for device in devices:
        run_device(args, device)


if __name__ == "__main__":
    main()
