"""Speed and memory of the fast DIRformer path against the plain reference path.

The plain path is the stand-in for the official code (it runs within 6% of it, bit-identical).
Both sides run the same random weights of the official full-size configurations (``diffir.zoo``).
Cases, each at 1 and at 2 threads (``--threads``):

* inference of DiffIRS2 (CPEN_S2, the 4-step IPR diffusion from a fixed noise, the DIRformer):
  x4 SR at 64x64, 128x128 and 256x256 LR inputs, deblurring at 256x256;
* one training iteration of S1 and of S2 for x4 SR, batch 2, at LR 32x32 -> GT 128x128 and at the
  official patch, LR 64x64 -> GT 256x256 (``--train-lr-size``): forward, L1 (S2: + the KD L1 between
  its IPR and that of a frozen CPEN_S1), backward, Adam step.

Each side runs in a worker process of its own (this script with ``--worker``), so that nothing one
side does to the process (memory it keeps, thread pools, compiled graphs) helps the other. The two
are driven alternately, one repetition each (interleaved, the order alternating), and each worker
measures the CPU time of its run (``time.process_time``; synchronised wall time on CUDA). Ratios of
medians of CPU time stay meaningful on a machine that other jobs load. Peak memory is the growth of
the worker's resident set during its first run of a case (sampled every millisecond, Linux), above
the loaded network; its first-run time includes compilation with ``--compile``.

The table gives, per case and thread count, the medians of each side, the ratio plain / compared
side, the largest absolute difference between the two outputs (training: of the first
iteration's output) and the peak memory of each side. Also printed: the share of S2 inference spent
in CPEN_S2 + the denoiser steps (fast path, 128x128), with ``--image`` the PSNR of each side's x4 SR
of that photo (``--weights``: a trained checkpoint; with random weights only the difference means
something), and the seconds per output megapixel of x4 SR at 256x256 LR. The last line is
machine-readable: the smallest inference and training speedups over the cases (1 thread), the
largest output difference and the largest peak-memory ratio compared / plain of the x4 SR inference
cases at 128x128 and 256x256 (nan for a group that ``--cases`` left out)::

    speedup inference=<x> train=<y> maxdiff=<z> memory=<m>

Examples::

    python benchmarks/speed.py                 # CPU, every case at 1 and 2 threads (about 13 minutes on 2 cores)
    python benchmarks/speed.py --quick         # 1 thread, one repetition
    python benchmarks/speed.py --dtype bf16 --image demo_data/val/dandelion_field.png \\
        --weights pretrained/demo_DiffIRS2_x4.safetensors --photo-size 256
    python benchmarks/speed.py --compile       # the fast path under torch.compile
    python benchmarks/speed.py --quick --compile --cases 64x64   # only the cases whose label has "64x64"
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import pickle
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import diffir  # noqa: F401  (before basicsr: installs the torchvision alias basicsr needs)
import torch
import torch.nn.functional as F

from diffir import DiffIRS1, DiffIRS2
from diffir.archs.cpen import IPR_DIM
from diffir.archs.detect import network_for_state_dict
from diffir.checkpoint import read_state_dict
from diffir.metrics import tensor_psnr
from diffir.image_io import ImageReadError, read_image, split_image
from diffir.utils.compile import MODES, compile_network
from diffir.utils.peak_rss import run_with_peak_rss
from diffir.zoo import PRESETS, stage_one

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
SR_SIZES = (64, 128, 256)
MEMORY_CASES = ("infer sr-x4 128x128", "infer sr-x4 256x256")


@dataclass(frozen=True)
class Setup:
    """How the compared side runs (the plain side: impl='plain', fp32, eager)."""
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    compile_mode: str | None = None  # torch.compile mode of the DIRformer; None: eager
    impl: str = "fast"  # the DIRformer implementation

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.dtype)


PLAIN = Setup(impl="plain")


@dataclass(frozen=True)
class Case:
    label: str
    options: dict  # network constructor arguments
    stage: int  # 1 or 2
    train: bool
    size: int  # LR side
    batch: int = 1


def constructor_kwargs(preset: str, stage: int) -> dict:
    """The preset's network options without their registry 'type', for calling the class directly."""
    options = PRESETS[preset] if stage == 2 else stage_one(PRESETS[preset])
    return {k: v for k, v in options.items() if k != "type"}


def build(options: dict, stage: int, impl: str = "plain") -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights in every process
    return (DiffIRS2 if stage == 2 else DiffIRS1)(**options, impl=impl)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- worker side
def inference_run(case: Case, setup: Setup):
    net = compile_network(build(case.options, 2, setup.impl).eval().to(setup.device), setup.compile_mode)
    generator = torch.Generator().manual_seed(1)
    lq = torch.rand(1, 3, case.size, case.size, generator=generator).to(setup.device)
    noise = torch.randn(1, IPR_DIM, generator=generator).to(setup.device)
    if setup != PLAIN:
        lq = channels_last(lq)

    @torch.inference_mode()
    def run() -> torch.Tensor:
        with setup.autocast():
            return net(lq, noise=noise)

    return run


def train_run(case: Case, setup: Setup):
    net = build(case.options, case.stage, setup.impl).train().to(setup.device)
    generator = torch.Generator().manual_seed(2)
    lq = torch.rand(case.batch, 3, case.size, case.size, generator=generator).to(setup.device)
    gt = torch.rand(case.batch, 3, 4 * case.size, 4 * case.size, generator=generator).to(setup.device)
    noise = torch.randn(case.batch, IPR_DIM, generator=generator).to(setup.device)
    if setup != PLAIN:
        lq, gt = channels_last(lq), channels_last(gt)
    if case.stage == 2:  # a frozen stage-one CPEN provides the IPR that stage two learns to estimate
        stage_one = build(stage_one_options(case.options), 1).to(setup.device).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.99))
    scaler = torch.amp.GradScaler(setup.device, enabled=setup.dtype == torch.float16)

    def run() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            if case.stage == 1:
                out, _ = net(lq, gt)
                loss = F.l1_loss(out, gt)
            else:
                with torch.no_grad():
                    ipr_s1 = stage_one.estimate_ipr(lq, gt)
                out, iprs = net(lq, ipr_s1, noise=noise)
                loss = F.l1_loss(out, gt) + F.l1_loss(iprs[-1], ipr_s1)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return out.detach()

    return run


def stage_one_options(options: dict) -> dict:
    """Stage-one network options of a stage-two network (the S2-only arguments dropped)."""
    return {k: v for k, v in stage_one(options).items() if k != "type"}


def first_run(run, device: str) -> tuple[torch.Tensor, float, float]:
    """Output, seconds and peak memory growth (MB; NaN where unmeasurable) of the first call."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = run()
        torch.cuda.synchronize()
        return out.clone(), time.perf_counter() - start, (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    start = time.process_time()
    out, peak_mb = run_with_peak_rss(run)
    return out, time.process_time() - start, peak_mb


def timed(run, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    run()
    return time.process_time() - start


def worker() -> None:
    """``--worker``: build and run cases as the parent asks, over pickles on stdin / stdout."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not corrupt the reply stream
    run = setup = None
    while True:
        command, argument = pickle.load(requests)
        if command == "case":  # dataclasses travel as dicts: the driver may know this module by another name
            case, setup = Case(**argument[0]), Setup(**argument[1])
            run = None
            gc.collect()
            run = (train_run if case.train else inference_run)(case, setup)
            reply = first_run(run, setup.device)
            reply = (reply[0].float().cpu(), *reply[1:])
        elif command == "threads":
            torch.set_num_threads(argument)
            reply = None
        elif command == "run":
            reply = timed(run, setup.device)
        else:
            return
        pickle.dump(reply, replies)
        replies.flush()


# --------------------------------------------------------------------------- driver side
class Worker:
    def __init__(self):
        # the worker imports the diffir that this process imported, wherever that is
        root = os.path.dirname(os.path.dirname(os.path.abspath(diffir.__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def ask(self, command: str, argument=None):
        pickle.dump((command, argument), self.process.stdin)
        self.process.stdin.flush()
        try:
            return pickle.load(self.process.stdout)
        except EOFError:
            raise RuntimeError(f"the benchmark worker exited (code {self.process.wait()}) on {command!r}; "
                               f"its error is above") from None

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            pickle.dump(("quit", None), self.process.stdin)
            self.process.stdin.close()
        self.process.wait()


def measure(case: Case, workers: dict, setup: Setup, thread_counts: list[int], repeats: int) -> list[dict]:
    """Rows of one case: per thread count, median CPU seconds of each side over interleaved runs."""
    sides = {"plain": PLAIN, "fast": setup}
    for name in sides:  # the first call (with compilation) at the first thread count measured
        workers[name].ask("threads", thread_counts[0])
    first = {name: workers[name].ask("case", (asdict(case), asdict(side))) for name, side in sides.items()}
    maxdiff = (first["plain"][0] - first["fast"][0]).abs().max().item()
    rows = []
    for threads in thread_counts:
        for name in sides:
            workers[name].ask("threads", threads)
        if setup.compile_mode and threads != thread_counts[0]:
            workers["fast"].ask("run")  # untimed: dynamo guards the thread count, so a new one recompiles
        times = {name: [] for name in sides}
        for r in range(repeats):
            for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                times[name].append(workers[name].ask("run"))
        plain, fast = (statistics.median(times[name]) for name in sides)
        rows.append({"case": case.label, "threads": threads, "plain": plain, "fast": fast, "speedup": plain / fast,
                     "maxdiff": maxdiff, "plain_mb": first["plain"][2], "fast_mb": first["fast"][2],
                     "first_fast": first["fast"][1], "images": case.batch})
        print_row(rows[-1])
    return rows


def print_header(setup: Setup, repeats: int) -> None:
    compiled = f", torch.compile mode={setup.compile_mode}" if setup.compile_mode else ""
    load = f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"# {setup.device}; compared side: impl={setup.impl}, {DTYPE_NAMES[setup.dtype]}{compiled}, "
          f"channels_last inputs; plain: fp32 eager; medians of {repeats} interleaved repetitions of CPU time"
          f"{load}", flush=True)
    print(f"{'case':<30} {'thr':>3} {'plain s':>9} {'fast s':>9} {'ratio':>6} {'maxdiff':>8} {'plain MB':>9} "
          f"{'fast MB':>8} {'mem':>5} {'fast 1st s':>10}", flush=True)


def print_row(row: dict) -> None:
    memory = row["fast_mb"] / row["plain_mb"] if row["plain_mb"] > 0 else float("nan")
    print(f"{row['case']:<30} {row['threads']:>3} {row['plain']:>9.3f} {row['fast']:>9.3f} {row['speedup']:>5.2f}x "
          f"{row['maxdiff']:>8.1e} {row['plain_mb']:>9.0f} {row['fast_mb']:>8.0f} {memory:>5.2f} "
          f"{row['first_fast']:>10.1f}", flush=True)


@torch.inference_mode()
def diffusion_share(size: int, setup: Setup, repeats: int) -> float:
    """Share of S2 x4 SR inference time of the compared side spent in CPEN_S2 + the denoiser steps."""
    net = compile_network(build(constructor_kwargs("sr-x4", 2), 2, setup.impl).eval().to(setup.device),
                          setup.compile_mode)
    lq = channels_last(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(setup.device))
    noise = torch.zeros(1, IPR_DIM, device=setup.device)

    def median_time(**kwargs) -> float:
        with setup.autocast():
            net(lq, noise=noise, **kwargs)
            return statistics.median(timed(lambda: net(lq, noise=noise, **kwargs), setup.device)
                                     for _ in range(repeats))

    whole, ipr = median_time(), median_time(ipr_only=True)
    print(f"S2 x4 SR {size}x{size}: whole {whole * 1e3:.1f} ms, CPEN_S2 + {net.timesteps} denoiser "
          f"steps {ipr * 1e3:.1f} ms = {ipr / whole:.1%} of inference (target <= 5%)", flush=True)
    return ipr / whole


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


def photo_pair(weights: str | None, setup: Setup) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The plain and the compared x4 SR network, both with the weights of a checkpoint (configuration
    inferred from them) or with the same random weights."""
    if weights:
        state_dict, _ = read_state_dict(weights)
        plain, fast = (network_for_state_dict(state_dict, origin=weights) for _ in range(2))
    else:
        plain, fast = (build(constructor_kwargs("sr-x4", 2), 2) for _ in range(2))
    plain.impl, fast.impl = "plain", setup.impl
    return plain.eval().to(setup.device), compile_network(fast.eval().to(setup.device), setup.compile_mode)


@torch.inference_mode()
def photo_psnr(path: str, weights: str | None, size: int, setup: Setup) -> float:
    plain, fast = photo_pair(weights, setup)
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
          f"{setup.impl} {DTYPE_NAMES[setup.dtype]} {p_fast:.4f} dB, difference {abs(p_fast - p_plain):.4f} dB "
          f"(target <= 0.01); the two outputs: {tensor_psnr(out_fast, out_plain):.1f} dB, "
          f"maxdiff {(out_fast.float() - out_plain).abs().max().item():.2e}",
          flush=True)
    return p_fast - p_plain


def cases(args) -> list[Case]:
    sr = constructor_kwargs("sr-x4", 2)
    inference = [Case(f"infer sr-x4 {size}x{size}", sr, 2, False, size) for size in SR_SIZES]
    inference.append(Case("infer deblur 256x256", constructor_kwargs("deblur", 2), 2, False, 256))
    training = [Case(f"train S{stage} b{args.train_batch} {lr}->{4 * lr}", constructor_kwargs("sr-x4", stage),
                     stage, True, lr, args.train_batch) for lr in args.train_lr_size for stage in (1, 2)]
    chosen = [case for case in inference + training
              if not args.cases or any(part and part in case.label for part in args.cases.split(","))]
    if not chosen:
        raise SystemExit(f"--cases {args.cases!r} matches none of: "
                         + ", ".join(case.label for case in inference + training))
    return chosen


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="autocast dtype of the fast path")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's DIRformer")
    parser.add_argument("--compile-mode", default="default", choices=MODES,
                        help="torch.compile mode with --compile ('reduce-overhead' uses CUDA graphs)")
    parser.add_argument("--fast-impl", default="fast", choices=["fast", "plain"],
                        help="DIRformer implementation of the compared side (plain: measure only --dtype / --compile)")
    parser.add_argument("--quick", action="store_true", help="1 thread and one repetition per case")
    parser.add_argument("--repeats", type=int, help="timed repetitions per side (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int_list,
                        help="comma-separated CPU thread counts (default 1,2; 1 with --quick)")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch (default 2)")
    parser.add_argument("--train-lr-size", type=int_list, default=[32, 64],
                        help="comma-separated training LR patch sides (default 32,64; 64 is the official 256x256 "
                             "GT patch)")
    parser.add_argument("--cases", help="only the cases whose label contains one of these comma-separated parts, "
                                         "e.g. '64x64,train S1'")
    parser.add_argument("--image", help="a photo for the PSNR check (x4 SR of a centre crop)")
    parser.add_argument("--photo-size", type=int, default=512, help="side of the photo's centre crop (HR)")
    parser.add_argument("--weights", help="a trained x4 SR DiffIRS2 checkpoint for the PSNR check (configuration "
                                          "inferred from it, e.g. pretrained/demo_DiffIRS2_x4.safetensors)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    setup = Setup(args.device, DTYPES[args.dtype], args.compile_mode if args.compile else None, args.fast_impl)
    repeats = args.repeats or (1 if args.quick else 3)
    thread_counts = args.threads or ([1] if args.quick else [1, 2])
    print_header(setup, repeats)
    workers = {"plain": Worker(), "fast": Worker()}
    try:
        rows = [row for case in cases(args) for row in measure(case, workers, setup, thread_counts, repeats)]
    finally:
        for w in workers.values():
            w.close()
    torch.set_num_threads(thread_counts[0])
    single = [row for row in rows if row["threads"] == thread_counts[0]]
    measured = {row["case"]: row for row in single}
    if "infer sr-x4 128x128" in measured:
        diffusion_share(128, setup, repeats)
    if args.image:
        photo_psnr(args.image, args.weights, args.photo_size, setup)

    largest = measured.get(f"infer sr-x4 {SR_SIZES[-1]}x{SR_SIZES[-1]}")
    if largest:
        megapixels = (4 * SR_SIZES[-1]) ** 2 / 1e6
        print(f"x4 SR, {thread_counts[0]} thread(s): {largest['plain'] / megapixels:.2f} s per output megapixel "
              f"plain, {largest['fast'] / megapixels:.2f} compared side", flush=True)
    nan = float("nan")  # for a group of cases that --cases left out
    memory = max((row["fast_mb"] / row["plain_mb"] for row in single if row["case"] in MEMORY_CASES), default=nan)
    inference = min((r["speedup"] for r in single if not r["case"].startswith("train")), default=nan)
    training = min((r["speedup"] for r in single if r["case"].startswith("train")), default=nan)
    print(f"speedup inference={inference:.3f} train={training:.3f} "
          f"maxdiff={max(r['maxdiff'] for r in rows):.3e} memory={memory:.3f}")


if __name__ == "__main__":
    main()
