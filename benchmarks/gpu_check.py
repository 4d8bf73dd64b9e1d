"""GPU check: the plain fp32 DIRformer against every GPU option, in one table (needs torch and this repo only).

The network is the official full-size x4 SR DIRformer (random weights; CPEN_S2 and the IPR
diffusion, a few percent of the time, are left out). Options, each against plain fp32 eager:

* ``bf16``: autocast to bfloat16;
* ``channels_last``: channels_last input and weights;
* ``fast``: the fast implementation (``impl='fast'``), fp32;
* ``bf16+cl``: bf16 autocast and channels_last together;
* ``compile reduce-overhead`` (inductor + CUDA graphs) and ``compile max-autotune-no-cudagraphs``,
  both in bf16 autocast; their first call (compilation) is printed;
* ``compile reduce-overhead fast``: the same over the fast implementation, whose x4 tail is one
  5x5 conv at LR resolution (a third of the network's FLOPs less; not measured on a GPU yet).

Inference: x4 SR at LR 64x64, 128x128, 256x256. Training: one iteration (forward, L1, backward,
Adam step) at batch 8, LR 64 -> GT 256 (the official patch). Each row gives the median time, the
ratio plain / option and, for inference, the PSNR difference against plain fp32 (PSNR of each output
against a smooth synthetic 4x-resolution image, whose LR version is the input). Targets: inference
>= 4x at <= 0.01 dB, training >= 2x. Compilations stop once ``--budget`` seconds have passed (the
rows skipped say so), so that the whole check fits in about 8 minutes on an H100::

    python benchmarks/gpu_check.py

Without a CUDA device it prints one line saying that it skipped the GPU cases and exits with 0.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SIZES = (64, 128, 256)
EAGER_OPTIONS = ("bf16", "channels_last", "fast", "bf16+cl")
COMPILE_MODES = ("reduce-overhead", "max-autotune-no-cudagraphs")
OPTIONS = (*EAGER_OPTIONS, *(f"compile {mode}" for mode in COMPILE_MODES), "compile reduce-overhead fast")
DEFAULT_OPTIONS = tuple(option for option in OPTIONS if "max-autotune" not in option)
CHANNELS_LAST = ("channels_last", "bf16+cl")


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


def smooth_image(size: int, device: torch.device) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    channels = [0.5 + 0.4 * torch.sin(9 * x + 3 * y + phase) * torch.cos(7 * y - phase) for phase in (0.0, 1.0, 2.0)]
    return torch.stack(channels)[None].to(device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(1 / F.mse_loss(a.float().clamp(0, 1), b.float()))).item()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Check:
    def __init__(self, args):
        self.args = args
        self.device = torch.device("cuda")
        self.dirformer = load_archs().DIRformer
        self.options = sr_x4_options()
        self.start = time.perf_counter()

    def network(self, option: str, train: bool = False) -> torch.nn.Module:
        torch.manual_seed(0)
        net = self.dirformer(**self.options, impl="fast" if "fast" in option.split() else "plain").to(self.device)
        net.train(train)
        if option in CHANNELS_LAST:
            net = net.to(memory_format=torch.channels_last)
        if option.startswith("compile"):
            net.compile(mode=option.split()[1], dynamic=False)
        return net

    @staticmethod
    def precision(option: str):
        if option in ("fp32", "channels_last", "fast"):
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.args.budget

    def inference(self, option: str, size: int) -> tuple[float, torch.Tensor, float]:
        net = self.network(option)
        hr = smooth_image(4 * size, self.device)
        lq = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
        if option in CHANNELS_LAST:
            lq = lq.contiguous(memory_format=torch.channels_last)
        ipr = torch.randn(1, 256, generator=torch.Generator().manual_seed(1)).to(self.device)

        @torch.inference_mode()
        def run():
            with self.precision(option):
                return net(lq, ipr)

        torch.cuda.synchronize()
        start = time.perf_counter()
        out = run().float().clone()  # a copy: CUDA-graph replays reuse their output memory
        run()
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        return median_seconds(run, self.args.repeats), out, first

    def training(self, option: str) -> tuple[float, float]:
        net = self.network(option, train=True)
        generator = torch.Generator().manual_seed(2)
        lq = torch.rand(self.args.batch, 3, 64, 64, generator=generator).to(self.device)
        gt = torch.rand(self.args.batch, 3, 256, 256, generator=generator).to(self.device)
        ipr = torch.randn(self.args.batch, 256, generator=generator).to(self.device)
        if option in CHANNELS_LAST:
            lq, gt = (t.contiguous(memory_format=torch.channels_last) for t in (lq, gt))
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            with self.precision(option):
                loss = F.l1_loss(net(lq, ipr), gt)
            loss.backward()
            optimizer.step()

        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        run()
        torch.cuda.synchronize()
        return median_seconds(run, self.args.repeats), time.perf_counter() - start


def row(case: str, option: str, seconds: float, plain: float, first: float, psnr_diff: str) -> None:
    print(f"{case:<22} {option:<34} {seconds * 1e3:10.1f} {plain / seconds:7.2f}x {psnr_diff:>10} {first:9.1f}",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="training batch (official: 8 per GPU)")
    parser.add_argument("--budget", type=float, default=390,
                        help="seconds after which no further compilation starts (default 390)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="LR sizes of the inference cases")
    parser.add_argument("--options", default=",".join(DEFAULT_OPTIONS),
                        help=f"comma-separated inference options (default: all but max-autotune, whose kernel "
                             f"search alone took over 4 minutes per size on an H100); any of {', '.join(OPTIONS)}")
    parser.add_argument("--train-options", default="bf16,bf16+cl,fast,compile default",
                        help="comma-separated training options ('' for no training case)")
    args = parser.parse_args(argv)
    unknown = set(args.options.split(",")) - set(OPTIONS)
    if unknown:
        parser.error(f"--options: unknown {sorted(unknown)}; choose from {OPTIONS}")
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; skipped the GPU cases (nothing measured)", flush=True)
        return 0
    torch.backends.cudnn.benchmark = True
    check = Check(args)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; full-size x4 SR DIRformer, random weights; "
          f"medians of {args.repeats}; ratio = plain fp32 time / option time", flush=True)
    print(f"{'case':<22} {'option':<34} {'ms':>10} {'ratio':>8} {'dPSNR dB':>10} {'1st s':>9}", flush=True)
    options = args.options.split(",")
    for size in map(int, args.sizes.split(",")):
        case = f"infer LR {size}x{size}"
        plain, reference, first = check.inference("fp32", size)
        hr = smooth_image(4 * size, check.device)
        plain_psnr = psnr(reference, hr)
        row(case, "plain fp32", plain, plain, first, f"{plain_psnr:.2f}")
        for option in options:
            if option.startswith("compile") and check.over_budget():
                print(f"{case:<22} {option:<34} skipped: past the --budget of {args.budget:.0f} s", flush=True)
                continue
            seconds, out, first = check.inference(option, size)
            row(case, option, seconds, plain, first, f"{psnr(out, hr) - plain_psnr:+.4f}")
    train_options = [option for option in args.train_options.split(",") if option]
    case = f"train b{args.batch} 64->256"
    if train_options:
        plain, first = check.training("fp32")
        row(case, "plain fp32", plain, plain, first, "")
    for option in train_options:
        if option.startswith("compile") and check.over_budget():
            print(f"{case:<22} {option:<34} skipped: past the --budget of {args.budget:.0f} s", flush=True)
            continue
        seconds, first = check.training(option)
        row(case, option, seconds, plain, first, "")
    print(f"total {time.perf_counter() - check.start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
