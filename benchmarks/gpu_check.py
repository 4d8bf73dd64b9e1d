"""GPU check: the plain fp32 DIRformer against every GPU option, in one table (needs torch and this repo only).

The network is the official full-size x4 SR DIRformer (random weights; CPEN_S2 and the IPR
diffusion, a few percent of the time, are left out). An option is one or more of these flags,
joined by ``+`` (``bf16+tail``), each measured against plain fp32 eager:

* ``bf16``: autocast to bfloat16; ``bf16w``: bfloat16 weights and input (no autocast);
* ``cl``: channels_last input and weights;
* ``fast``: the fast implementation (``impl='fast'``), composite x4 tail included;
* ``tail``: the plain blocks with the fast path's composite x4 tail (5x5 convs at LR resolution
  instead of three convs at 1x, 2x and 4x: a third of the network's FLOPs less); compiled, this is
  what ``impl='auto'`` runs on a GPU;
* ``graph`` (inference, CUDA only): the eager forward captured once in a CUDA graph and replayed
  (launch overhead gone without compiling; the input and output stay in the same memory);
* ``compile MODE`` first (``compile reduce-overhead tail``): ``torch.compile`` in that mode
  (``reduce-overhead`` is inductor + CUDA graphs), always in bf16 autocast; the first call
  (compilation) is printed.

Inference: x4 SR at LR 64x64, 128x128, 256x256. Training: one iteration (forward, L1, backward,
Adam step) at batch 8, LR 64 -> GT 256 (the official patch). Each row gives the median time, the
ratio plain / option and, for inference, seconds per output megapixel, the largest difference from
the plain fp32 output and the PSNR difference against plain fp32 (PSNR of each output against a
smooth synthetic 4x-resolution image, whose LR version is the input). Targets: inference >= 4x at
<= 0.01 dB, training >= 2x. Eager rows come first, then the compiled ones (inference size by
size in the order of ``--sizes``, then training) until ``--budget`` seconds have passed (the rows
skipped say so), so that the whole check fits in about 8 minutes on an H100::

    python benchmarks/gpu_check.py

``--profile 'compile default tail@256'`` adds, after the table, where that case's time goes on the
device: its kernels by kind and the costliest ones.

Without a CUDA device it prints one line saying that it skipped the GPU cases and exits with 0;
``--device cpu`` runs the same table on the CPU (slowly: to try the script out).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib
import importlib.util
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SIZES = (64, 128, 256)
FLAGS = ("bf16", "bf16w", "cl", "fast", "tail", "graph")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
DEFAULT_OPTIONS = ("bf16", "cl", "fast", "tail", "graph", "bf16w+tail+graph", "compile reduce-overhead tail",
                   "compile reduce-overhead cl+tail", "compile reduce-overhead")
DEFAULT_TRAIN_OPTIONS = ("bf16", "tail", "compile default tail", "compile reduce-overhead tail", "compile default")


@dataclasses.dataclass(frozen=True)
class Option:
    """One row's settings, parsed from its name (see the module docstring)."""
    name: str
    flags: frozenset = frozenset()
    compile_mode: str | None = None

    @classmethod
    def parse(cls, name: str) -> Option:
        tokens = name.replace("+", " ").split()
        mode = None
        if tokens[:1] == ["compile"]:
            if len(tokens) < 2 or tokens[1] not in COMPILE_MODES:
                raise ValueError(f"option {name!r}: 'compile' is followed by a mode, one of {COMPILE_MODES}")
            mode, tokens = tokens[1], tokens[2:]
        unknown = sorted(set(tokens) - set(FLAGS))
        if not tokens and mode is None or unknown:
            raise ValueError(f"option {name!r}: unknown flags {unknown}; an option is 'compile MODE' and/or "
                             f"flags joined by '+', from {FLAGS}")
        return cls(name, frozenset(tokens), mode)

    @property
    def autocast(self) -> bool:
        return "bf16" in self.flags or self.compile_mode is not None


PLAIN = Option("plain fp32")


def load_archs() -> types.ModuleType:
    """diffir/archs as a package of its own: the DIRformer without importing diffir (and basicsr)."""
    name = "gpu_check_archs"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(REPO / "diffir" / "archs")]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.dirformer")


def sr_x4_options() -> dict:
    """The DIRformer options of the official x4 SR network (diffir/zoo.py, read without diffir)."""
    spec = importlib.util.spec_from_file_location("gpu_check_zoo", REPO / "diffir" / "zoo.py")
    zoo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = zoo  # its dataclass looks itself up there
    spec.loader.exec_module(zoo)
    preset = zoo.PRESETS["sr-x4"]
    keys = ("inp_channels", "out_channels", "dim", "num_blocks", "num_refinement_blocks", "heads",
            "ffn_expansion_factor", "bias", "LayerNorm_type", "scale")
    return {"head": "sr", **{k: preset[k] for k in keys}}


class CompositeTail(nn.Module):
    """The x4 tail as the fast path computes it, for a network that keeps its plain blocks."""

    def __init__(self, tail: nn.Module):
        super().__init__()
        self.convs = tail

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return load_archs().dirformer_fast.x4_tail(self.convs, feat)


def smooth_image(size: int, device: torch.device) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    channels = [0.5 + 0.4 * torch.sin(9 * x + 3 * y + phase) * torch.cos(7 * y - phase) for phase in (0.0, 1.0, 2.0)]
    return torch.stack(channels)[None].to(device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / F.mse_loss(a.float().clamp(0, 1), b.float()))).item()


class Check:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dirformer = load_archs().DIRformer
        self.options = sr_x4_options()
        self.start = time.perf_counter()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def median_seconds(self, fn) -> float:
        times = []
        for _ in range(self.args.repeats):
            self.synchronize()
            start = time.perf_counter()
            fn()
            self.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def network(self, option: Option, train: bool = False) -> nn.Module:
        torch.manual_seed(0)
        net = self.dirformer(**self.options, impl="fast" if "fast" in option.flags else "plain")
        if "tail" in option.flags:
            net.tail = CompositeTail(net.tail)
        net = net.to(self.device, torch.bfloat16 if "bf16w" in option.flags else torch.float32).train(train)
        if "cl" in option.flags:
            net = net.to(memory_format=torch.channels_last)
        if option.compile_mode:
            net.compile(mode=option.compile_mode, dynamic=False)
        return net

    def inputs(self, option: Option, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """The tensors on the device, in the option's dtype and memory format."""
        dtype = torch.bfloat16 if "bf16w" in option.flags else torch.float32
        tensors = [t.to(self.device, dtype) for t in tensors]
        if "cl" in option.flags:
            tensors = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]
        return tensors

    def precision(self, option: Option):
        if not option.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.args.budget

    def inference_call(self, option: Option, size: int) -> Callable[[], torch.Tensor]:
        """The inference case as a call without arguments that returns the output (not yet run; without
        the CUDA graph of the 'graph' flag, which :func:`graphed` captures on its first runs)."""
        net = self.network(option)
        hr = smooth_image(4 * size, self.device)
        lq = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
        ipr = torch.randn(1, 256, generator=torch.Generator().manual_seed(1))
        lq, ipr = self.inputs(option, lq, ipr)

        @torch.inference_mode()
        def run():
            with self.precision(option):
                return net(lq, ipr)

        return run

    def inference(self, option: Option, size: int) -> tuple[float, torch.Tensor, float]:
        run = self.inference_call(option, size)
        self.synchronize()
        start = time.perf_counter()
        if "graph" in option.flags:
            run = graphed(run)
        out = run().float().clone()  # a copy: CUDA-graph replays reuse their output memory
        run()
        self.synchronize()
        first = time.perf_counter() - start
        return self.median_seconds(run), out, first

    def profile(self, option: Option, size: int, calls: int = 3) -> None:
        """Where the time of the inference case goes: the device's kernels (the CPU's operators on the
        CPU) by kind, and the costliest ones, per call."""
        run = self.inference_call(option, size)
        if "graph" in option.flags:
            run = graphed(run)
        run()
        run()
        on_cuda = self.device.type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if on_cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(calls):
                run()
            self.synchronize()
        kernels = {}  # name -> (microseconds, count) over the calls
        for event in profiler.key_averages():
            if on_cuda and event.device_type == torch.autograd.DeviceType.CUDA:
                kernels[event.key] = event.self_device_time_total, event.count
            elif not on_cuda and event.key.startswith("aten::"):
                kernels[event.key] = event.self_cpu_time_total, event.count
        total = sum(us for us, _ in kernels.values())
        launches = f" in {sum(count for _, count in kernels.values()) // calls} kernels" if on_cuda else ""
        print(f"profile: {option.name} at LR {size}x{size}, {calls} calls: {total / calls / 1e3:.2f} ms per call"
              f"{launches}", flush=True)
        kinds = collections.Counter()
        for name, (us, _) in kernels.items():
            kinds[kernel_kind(name)] += us
        for kind, us in sorted(kinds.items(), key=lambda item: -item[1]):
            print(f"  {kind:<32} {us / calls / 1e3:8.2f} ms {100 * us / total:5.1f}%", flush=True)
        for name, (us, count) in sorted(kernels.items(), key=lambda item: -item[1][0])[:PROFILE_TOP]:
            print(f"  {us / calls / 1e3:8.2f} ms {count // calls:5d}x  {name[:100]}", flush=True)

    def training(self, option: Option) -> tuple[float, float]:
        net = self.network(option, train=True)
        generator = torch.Generator().manual_seed(2)
        lr = self.args.train_lr
        lq = torch.rand(self.args.batch, 3, lr, lr, generator=generator)
        gt = torch.rand(self.args.batch, 3, 4 * lr, 4 * lr, generator=generator)
        ipr = torch.randn(self.args.batch, 256, generator=generator)
        lq, gt, ipr = self.inputs(option, lq, gt, ipr)
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            with self.precision(option):
                loss = F.l1_loss(net(lq, ipr), gt)
            loss.backward()
            optimizer.step()

        self.synchronize()
        start = time.perf_counter()
        run()
        run()
        self.synchronize()
        return self.median_seconds(run), time.perf_counter() - start


PROFILE_TOP = 15  # kernels listed by --profile
# kinds of kernel (or CPU operator) by words in their names, first match: inductor's kernels first (their
# names list the operators they fuse, "convolution" among them), convolutions before matrix products
# (cuDNN's are implicit GEMMs), matrix products before reductions (cuBLAS's split-K reduction kernels)
KERNEL_KINDS = (
    ("matrix product (triton template)", ("triton_tem",)),
    ("fused by inductor (triton)", ("triton",)),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "winograd", "depthwise")),
    ("matrix product", ("gemm", "gemv", "splitk", "nvjet", "cutlass", "xmma", "matmul", "aten::mm", "bmm", "addmm",
                        "cublas")),
    ("normalisation", ("norm",)),
    ("softmax, reduction", ("softmax", "reduce", "sum", "mean", "var")),
    ("copy, layout", ("copy", "memcpy", "memset", "cat", "transpose", "nchw", "nhwc", "contiguous", "shuffle")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "gelu", "mul", "add", "sub", "div", "pow", "sqrt")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, words in KERNEL_KINDS if any(word in lowered for word in words)), "other")


def graphed(fn):
    """``fn`` (no arguments, returns a tensor) captured in a CUDA graph: each call replays all its
    kernels in one launch and returns the same output tensor."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up runs outside the capture: cuDNN picks its algorithms here
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> torch.Tensor:
        graph.replay()
        return out
    return replay


def row(case: str, option: str, seconds: float, plain: float, first: float, per_megapixel: str = "",
        max_diff: str = "", psnr_diff: str = "") -> None:
    print(f"{case:<20} {option:<32} {seconds * 1e3:9.1f} {plain / seconds:7.2f}x {per_megapixel:>7} {max_diff:>8} "
          f"{psnr_diff:>9} {first:7.1f}", flush=True)


def skipped(case: str, option: Option, budget: float) -> None:
    print(f"{case:<20} {option.name:<32} skipped: past the --budget of {budget:.0f} s", flush=True)


def profile_case(case: str) -> tuple[Option, int]:
    """'OPTION@SIZE' of --profile ('plain fp32' is the plain network)."""
    name, at, size = case.strip().rpartition("@")
    if not at or not size.isdigit() or int(size) < 1:
        raise ValueError(f"--profile {case!r}: expected OPTION@SIZE, e.g. 'compile default tail@256'")
    name = name.strip()
    return (PLAIN if name == PLAIN.name else Option.parse(name)), int(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="training batch (official: 8 per GPU)")
    parser.add_argument("--train-lr", type=int, default=64, help="training LR patch size (official: 64)")
    parser.add_argument("--budget", type=float, default=390,
                        help="seconds after which no further compilation starts (default 390)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="LR sizes of the inference cases")
    parser.add_argument("--options", default=",".join(DEFAULT_OPTIONS),
                        help="comma-separated inference options, in the order measured (compiled ones after "
                             "the eager ones); 'compile max-autotune-no-cudagraphs' is left out of the default, "
                             "its kernel search alone took over 4 minutes per size on an H100")
    parser.add_argument("--train-options", default=",".join(DEFAULT_TRAIN_OPTIONS),
                        help="comma-separated training options ('' for no training case)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script out")
    parser.add_argument("--profile", default="",
                        help="comma-separated OPTION@SIZE, e.g. 'compile default tail@256': after the table, "
                             "where 3 calls of that inference case spend their time on the device, by kind of kernel "
                             "and the costliest kernels (compiled ones skipped past the --budget); under CUDA graphs "
                             "('graph', 'reduce-overhead') the profiler may see the graph launch, not its kernels")
    args = parser.parse_args(argv)
    try:
        options = [Option.parse(name) for name in args.options.split(",") if name]
        train_options = [Option.parse(name) for name in args.train_options.split(",") if name]
        profiles = [profile_case(case) for case in args.profile.split(",") if case]
    except ValueError as error:
        parser.error(str(error))
    if any("graph" in option.flags for option in train_options):
        parser.error("--train-options: 'graph' is for inference only")
    on_cuda = torch.device(args.device).type == "cuda"
    if not on_cuda and any("graph" in option.flags for option in (*options, *(option for option, _ in profiles))):
        parser.error("--options, --profile: 'graph' needs a CUDA --device")
    if on_cuda and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; skipped the GPU cases (nothing measured)", flush=True)
        return 0
    torch.backends.cudnn.benchmark = True
    check = Check(args)
    name = torch.cuda.get_device_name() if check.device.type == "cuda" else "CPU"
    print(f"# {name}, torch {torch.__version__}; full-size x4 SR DIRformer, random weights; medians of "
          f"{args.repeats}; ratio = plain fp32 time / option time; s/MP = seconds per output megapixel", flush=True)
    print(f"{'case':<20} {'option':<32} {'ms':>9} {'ratio':>8} {'s/MP':>7} {'maxdiff':>8} {'dPSNR dB':>9} "
          f"{'1st s':>7}", flush=True)

    sizes = [int(size) for size in args.sizes.split(",") if size]
    plain = {}  # size -> (seconds, output, PSNR)
    case = {size: f"infer LR {size}x{size}" for size in sizes}

    def infer(option: Option, size: int) -> None:
        seconds, out, first = check.inference(option, size)
        megapixels = (4 * size) ** 2 / 1e6
        out_psnr = psnr(out, smooth_image(4 * size, check.device))
        if option is PLAIN:
            plain[size] = seconds, out, out_psnr
        base, reference, base_psnr = plain[size]
        row(case[size], option.name, seconds, base, first, f"{seconds / megapixels:.4f}",
            f"{(out - reference).abs().max().item():.1e}", f"{out_psnr - base_psnr:+.4f}")

    train_case = f"train b{args.batch} {args.train_lr}->{4 * args.train_lr}"
    train_plain = []

    def train(option: Option) -> None:
        seconds, first = check.training(option)
        if option is PLAIN:
            train_plain.append(seconds)
        row(train_case, option.name, seconds, train_plain[0], first)

    eager = [option for option in options if not option.compile_mode]
    for size in sizes:
        for option in (PLAIN, *eager):
            infer(option, size)
    if train_options:
        for option in (PLAIN, *(option for option in train_options if not option.compile_mode)):
            train(option)
    compiled = [option for option in options if option.compile_mode]
    for size in sizes:  # size by size, so that the compiled options are side by side at each
        for option in compiled:
            if check.over_budget():
                skipped(case[size], option, args.budget)
            else:
                infer(option, size)
    for option in (option for option in train_options if option.compile_mode):
        if check.over_budget():
            skipped(train_case, option, args.budget)
        else:
            train(option)
    for option, size in profiles:
        if option.compile_mode and check.over_budget():
            skipped(f"profile LR {size}x{size}", option, args.budget)
        else:
            check.profile(option, size)
    print(f"total {time.perf_counter() - check.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
