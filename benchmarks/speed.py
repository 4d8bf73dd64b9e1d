"""The fast DIRformer path against the plain reference path, side by side in one run.

Both paths run the same weights (random, official full-size configurations from ``diffir.zoo``:
the x4 SR network and the deblurring network). The plain path always runs in float32 eager mode;
the compared side runs ``--fast-impl`` (the fast path by default; ``plain`` measures precision and
compilation alone) in ``--dtype`` (autocast), optionally under ``torch.compile`` (``--compile``), and
is fed channels_last inputs (which also speeds up CPEN's convolutions). For each case it prints the
median latency of each path, its throughput, the speedup and the largest absolute difference
between the two outputs:

* inference of DiffIRS2 (CPEN_S2, the 4-step IPR diffusion from a fixed noise, the DIRformer):
  x4 SR at 64x64, 128x128 and 256x256 LR inputs, deblurring at 256x256;
* one training iteration of S1 and S2 for x4 SR: forward, L1 (S2: + the KD L1 between its IPR and
  that of a frozen CPEN_S1), backward, Adam step;
* the share of S2 inference time spent in CPEN_S2 + the denoiser steps (at 256x256, fast path);
* with ``--image``: the PSNR of each path's x4 SR of that photo against the photo (``--weights`` loads
  a trained DiffIRS2 checkpoint for this; with random weights the PSNRs themselves mean nothing but
  their difference still measures the numerical deviation).

Repetitions of the two paths are interleaved and medians reported, so that load from other
processes hits both alike. The last line is machine-readable, for the 128x128 x4 SR case and the
two training iterations together::

    speedup inference=<x> train=<y> maxdiff=<z>

Examples::

    python benchmarks/speed.py --quick                       # CPU, a few minutes
    python benchmarks/speed.py --device cuda --dtype bf16 --image /work/shared/data/photos/dune_grass.png
    python benchmarks/speed.py --device cuda --dtype bf16 --fast-impl plain --compile --compile-mode reduce-overhead
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass

import diffir  # noqa: F401  (before basicsr: installs the torchvision alias basicsr needs)
import torch
import torch.nn.functional as F

from diffir import DiffIRS1, DiffIRS2
from diffir.archs.detect import network_for_state_dict
from diffir.archs.ipr_diffusion import IPR_DIM
from diffir.metrics import tensor_psnr
from diffir.checkpoint import read_state_dict
from diffir.image_io import ImageReadError, read_image, split_image
from diffir.utils.compile import MODES, compile_network
from diffir.zoo import PRESETS, stage_one

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype
    compile_mode: str | None  # torch.compile mode for the fast path's DIRformer; None: eager
    fast_impl: str = "fast"  # the DIRformer implementation of the compared ("fast") side

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def constructor_kwargs(preset: str, stage: int) -> dict:
    """The preset's network options without their registry 'type', for calling the class directly."""
    options = PRESETS[preset] if stage == 2 else stage_one(PRESETS[preset])
    return {k: v for k, v in options.items() if k != "type"}


def build_pair(preset: str, stage: int, setup: Setup, mode: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A plain and a fast network with the same random weights."""
    cls = DiffIRS2 if stage == 2 else DiffIRS1
    torch.manual_seed(0)
    plain = cls(**constructor_kwargs(preset, stage), impl="plain").to(setup.device)
    fast = cls(**constructor_kwargs(preset, stage), impl=setup.fast_impl).to(setup.device)
    fast.load_state_dict(plain.state_dict())
    for net in (plain, fast):
        net.train(mode == "train")
    return plain, compile_network(fast, setup.compile_mode)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def median_times(runs: dict, repeats: int, setup: Setup, warmup: int) -> tuple[dict, dict, dict]:
    """Median seconds of each named callable over interleaved repetitions (the order alternates), the
    output of each one's first call, and the seconds of that first call (compilation included)."""
    outputs, first_call = {}, {}
    for name, run in runs.items():
        for _ in range(warmup):  # also triggers compilation and cuDNN autotuning
            setup.synchronize()
            start = time.perf_counter()
            out = run()
            setup.synchronize()
            if name not in outputs:  # a copy: CUDA-graph replays reuse their output memory
                outputs[name] = out.clone()
                first_call[name] = time.perf_counter() - start
    times = {name: [] for name in runs}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            setup.synchronize()
            start = time.perf_counter()
            runs[name]()
            setup.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outputs, first_call


def compare(run_plain, run_fast, repeats: int, setup: Setup, warmup: int) -> dict:
    medians, outputs, first_call = median_times({"plain": run_plain, "fast": run_fast}, repeats, setup, warmup)
    return {**medians, "out_plain": outputs["plain"], "out_fast": outputs["fast"], "first_fast": first_call["fast"]}


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def report(label: str, result: dict, images: int) -> dict:
    plain, fast = result["plain"], result["fast"]
    result["speedup"] = plain / fast
    result["maxdiff"] = max_abs_diff(result["out_plain"], result["out_fast"])
    print(f"{label:<28} plain {plain * 1e3:9.1f} ms {images / plain:8.2f} img/s | fast {fast * 1e3:9.1f} ms "
          f"{images / fast:8.2f} img/s | speedup {result['speedup']:5.2f}x | maxdiff {result['maxdiff']:.2e} | "
          f"fast first call {result['first_fast']:.1f} s", flush=True)
    return result


# --------------------------------------------------------------------------- inference
@torch.inference_mode()
def inference_case(preset: str, size: int, setup: Setup, repeats: int, warmup: int) -> dict:
    plain, fast = build_pair(preset, 2, setup, "eval")
    generator = torch.Generator().manual_seed(1)
    lq = torch.rand(1, 3, size, size, generator=generator).to(setup.device)
    noise = torch.randn(1, IPR_DIM, generator=generator).to(setup.device)
    lq_fast = channels_last(lq)

    def run_fast():
        with setup.autocast():
            return fast(lq_fast, noise=noise)

    result = compare(lambda: plain(lq, noise=noise), run_fast, repeats, setup, warmup)
    return report(f"infer {preset} {size}x{size}", result, images=1)


@torch.inference_mode()
def diffusion_share(size: int, setup: Setup, repeats: int) -> float:
    """Share of fast-path S2 x4 SR inference time spent in CPEN_S2 + the denoiser steps."""
    _, fast = build_pair("sr-x4", 2, setup, "eval")
    lq = channels_last(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(setup.device))
    noise = torch.zeros(1, IPR_DIM, device=setup.device)

    def whole():
        with setup.autocast():
            return fast(lq, noise=noise)

    def ipr_only():
        with setup.autocast():
            return fast(lq, noise=noise, ipr_only=True)

    medians, _, _ = median_times({"whole": whole, "ipr": ipr_only}, repeats, setup, warmup=1)
    share = medians["ipr"] / medians["whole"]
    print(f"S2 x4 SR {size}x{size}: whole {medians['whole'] * 1e3:.1f} ms, CPEN_S2 + {fast.diffusion.num_timesteps} "
          f"denoiser steps {medians['ipr'] * 1e3:.1f} ms = {share:.1%} of inference (target <= 5%)", flush=True)
    return share


# --------------------------------------------------------------------------- training
def train_case(stage: int, setup: Setup, batch: int, lr_size: int, repeats: int, warmup: int) -> dict:
    plain, fast = build_pair("sr-x4", stage, setup, "train")
    generator = torch.Generator().manual_seed(2)
    lq = torch.rand(batch, 3, lr_size, lr_size, generator=generator).to(setup.device)
    gt = torch.rand(batch, 3, 4 * lr_size, 4 * lr_size, generator=generator).to(setup.device)
    noise = torch.randn(batch, IPR_DIM, generator=generator).to(setup.device)
    if stage == 2:  # a frozen stage-one CPEN provides the IPR that stage two learns to estimate
        torch.manual_seed(0)
        cpen_s1 = DiffIRS1(**constructor_kwargs("sr-x4", 1)).E.to(setup.device).eval().requires_grad_(False)

    def trainer(net: torch.nn.Module, dtype: torch.dtype, lq: torch.Tensor, gt: torch.Tensor):
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.99))
        scaler = torch.amp.GradScaler(setup.device.type, enabled=dtype == torch.float16)
        precision = Setup(setup.device, dtype, compile_mode=None, fast_impl=setup.fast_impl)

        def iteration() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                if stage == 1:
                    out, _ = net(lq, gt)
                    loss = F.l1_loss(out, gt)
                else:
                    with torch.no_grad():
                        ipr_s1 = cpen_s1(lq, gt)
                    out, iprs = net(lq, ipr_s1, noise=noise)
                    loss = F.l1_loss(out, gt) + F.l1_loss(iprs[-1], ipr_s1)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return out.detach()

        return iteration

    # maxdiff compares the first iterations' outputs, computed from the same weights
    result = compare(trainer(plain, torch.float32, lq, gt),
                     trainer(fast, setup.dtype, channels_last(lq), channels_last(gt)), repeats, setup, warmup)
    return report(f"train S{stage} x4 SR b{batch} {lr_size}->{4 * lr_size}", result, images=batch)


# --------------------------------------------------------------------------- PSNR on a photo
def load_photo(path: str, size: int) -> torch.Tensor:
    try:
        image = split_image(read_image(path))[0]  # float32 RGB in [0, 1]
    except ImageReadError as err:
        raise FileNotFoundError(f"--image: cannot read {path} as an image") from err
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"--image: {path} is {w}x{h}, smaller than the {size}x{size} crop; pass a larger photo "
                         f"or a smaller --photo-size")
    top, left = (h - size) // 2, (w - size) // 2
    return torch.from_numpy(image[top:top + size, left:left + size]).permute(2, 0, 1)[None]


def trained_pair(weights: str, setup: Setup) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The plain and the compared network, both with the weights of a checkpoint (configuration
    inferred from them)."""
    state_dict, _ = read_state_dict(weights)
    plain, fast = (network_for_state_dict(state_dict, origin=weights).to(setup.device) for _ in range(2))
    plain.G.impl, fast.G.impl = "plain", setup.fast_impl
    return plain, compile_network(fast, setup.compile_mode)


@torch.inference_mode()
def photo_psnr(path: str, weights: str | None, size: int, setup: Setup) -> float:
    plain, fast = trained_pair(weights, setup) if weights else build_pair("sr-x4", 2, setup, "eval")
    if fast.scale != 4:
        raise ValueError(f"--weights: {weights} is a x{fast.scale} network; the PSNR check needs an x4 SR network")
    hr = load_photo(path, size).to(setup.device)
    lq = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    noise = torch.randn(1, IPR_DIM, generator=torch.Generator().manual_seed(3)).to(setup.device)
    out_plain = plain(lq, noise=noise)
    with setup.autocast():
        out_fast = fast(channels_last(lq), noise=noise)
    p_plain, p_fast = tensor_psnr(out_plain, hr), tensor_psnr(out_fast, hr)
    kind = "trained" if weights else "random"
    print(f"PSNR x4 SR of {path} ({size}x{size}, {kind} weights): plain fp32 {p_plain:.4f} dB, "
          f"{setup.fast_impl} {DTYPE_NAMES[setup.dtype]} {p_fast:.4f} dB, difference {abs(p_fast - p_plain):.4f} dB "
          f"(target <= 0.01); the two outputs: {tensor_psnr(out_fast, out_plain):.1f} dB, "
          f"maxdiff {max_abs_diff(out_fast, out_plain):.2e}",
          flush=True)
    return p_fast - p_plain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype of the fast path")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's DIRformer")
    parser.add_argument("--compile-mode", default="default", choices=MODES,
                        help="torch.compile mode with --compile ('reduce-overhead' uses CUDA graphs)")
    parser.add_argument("--fast-impl", default="fast", choices=["fast", "plain"],
                        help="DIRformer implementation of the compared side (plain: measure only --dtype / --compile)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repetitions (for a CPU)")
    parser.add_argument("--repeats", type=int, help="timed repetitions per path (default 3 quick, 10 otherwise)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on the CPU (default: torch's choice)")
    parser.add_argument("--train-batch", type=int, help="training batch (default 8 on cuda, as official; 2 on cpu)")
    parser.add_argument("--train-lr-size", type=int, default=64,
                        help="training LR patch side (default 64: the official 256x256 GT patch)")
    parser.add_argument("--image", help="a photo for the PSNR check (x4 SR of a centre crop)")
    parser.add_argument("--photo-size", type=int, default=512, help="side of the photo's centre crop (HR)")
    parser.add_argument("--weights", help="a trained x4 SR DiffIRS2 checkpoint for the PSNR check (configuration "
                                          "inferred from it, e.g. pretrained/demo_DiffIRS2_x4.safetensors)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = Setup(torch.device(args.device), DTYPES[args.dtype], args.compile_mode if args.compile else None,
                  args.fast_impl)
    cuda = args.device == "cuda"
    repeats = args.repeats or (3 if args.quick else 10)
    warmup = 2 if args.compile or cuda else 1
    sr_sizes = [64, 128] if args.quick else [64, 128, 256]
    batch = args.train_batch or (8 if cuda else 2)
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    compiled = f", torch.compile mode={args.compile_mode}" if args.compile else ""
    print(f"# {device_name}; compared side: impl={args.fast_impl}, {args.dtype}{compiled}, channels_last inputs; "
          f"plain path: fp32 eager; medians of {repeats} interleaved repetitions", flush=True)

    results = {size: inference_case("sr-x4", size, setup, repeats, warmup) for size in sr_sizes}
    inference_case("deblur", 256, setup, repeats, warmup)
    train = [train_case(stage, setup, batch, args.train_lr_size, repeats, warmup) for stage in (1, 2)]
    diffusion_share(256, setup, max(2, repeats // 2))
    if args.image:
        photo_psnr(args.image, args.weights, args.photo_size, setup)

    train_speedup = sum(r["plain"] for r in train) / sum(r["fast"] for r in train)
    print(f"speedup inference={results[128]['speedup']:.3f} train={train_speedup:.3f} "
          f"maxdiff={results[128]['maxdiff']:.3e}")


if __name__ == "__main__":
    main()
