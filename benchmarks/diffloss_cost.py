"""Cost of DiffLoss in training: time per iteration and peak memory, with vs without, in one run.

Each configuration trains the same restoration network (basicsr's MSRResNet, x4) for a few
iterations in a fresh process, so peak memory is measured in isolation: CUDA peak allocated memory
on a GPU, the process's peak resident set size on CPU (this includes torch itself, so compare the
ratios, not the absolute numbers). Configurations:

    baseline        L1 only
    diffloss        L1 + DiffLoss, prior in fp32
    diffloss_bf16   prior under bf16 autocast
    diffloss_ckpt   prior with activation checkpointing
    diffloss_bf16_ckpt  both

The prior is the architecture of guided-diffusion's 256x256_diffusion_uncond.pt (``--prior
official``; random weights unless ``--prior-path`` is given: cost does not depend on the weights)
or the tiny test prior (``--prior tiny``, the default on CPU).

    python benchmarks/diffloss_cost.py                       # CPU: tiny prior
    python benchmarks/diffloss_cost.py --prior official      # GPU: the paper's prior at 256x256
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

TINY_PRIOR = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16,8",
                  num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True)
CONFIGS = {
    "baseline": None,
    "diffloss": dict(autocast_dtype="fp32", checkpoint=False),
    "diffloss_bf16": dict(autocast_dtype="bf16", checkpoint=False),
    "diffloss_ckpt": dict(autocast_dtype="fp32", checkpoint=True),
    "diffloss_bf16_ckpt": dict(autocast_dtype="bf16", checkpoint=True),
}


def run_config(name: str, args: argparse.Namespace, results) -> None:
    """Train for args.warmup + args.iters iterations; put (name, ms per iteration, peak MiB) in results."""
    import diffir  # noqa: F401  (registers diffir and installs the basicsr compatibility alias)
    import torch
    import torch.nn.functional as F
    from basicsr.archs.srresnet_arch import MSRResNet

    from diffir.archs.prior_unet_arch import count_parameters
    from diffir.losses.diffloss_loss import OFFICIAL_PRIOR_OPT, DiffLoss

    torch.manual_seed(0)
    device = torch.device(args.device)
    net = MSRResNet(num_feat=64, num_block=16, upscale=4).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    diffloss = None
    if CONFIGS[name] is not None:
        prior_opt = OFFICIAL_PRIOR_OPT if args.prior == "official" else TINY_PRIOR
        diffloss = DiffLoss(args.prior_path, prior_opt, allow_random_prior=args.prior_path is None,
                            **CONFIGS[name]).to(device)
        if name == "diffloss":
            print(f"prior: {args.prior}, {count_parameters(diffloss.prior) / 1e6:.1f} M parameters, "
                  f"{diffloss.prior.image_size}px", flush=True)
    gt = torch.rand(args.batch, 3, args.patch, args.patch, device=device)
    lq = F.interpolate(gt, scale_factor=0.25, mode="bicubic", align_corners=False).clamp(0, 1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        output = net(lq)
        loss = F.l1_loss(output, gt)
        if diffloss is not None:
            loss = loss + diffloss(output, gt)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    results.put((name, 1000 * (time.perf_counter() - start) / args.iters, peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--prior", choices=["tiny", "official"], default=None,
                        help="prior architecture (default: official on CUDA, tiny on CPU)")
    parser.add_argument("--prior-path", default=None, help="prior checkpoint (default: random weights)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=None, help="GT patch size (default: the prior's image_size)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()

    import torch  # only to pick defaults; each configuration runs in its own process

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.prior = args.prior or ("official" if args.device == "cuda" else "tiny")
    args.patch = args.patch or (256 if args.prior == "official" else 32)
    if "baseline" not in args.configs:
        args.configs.insert(0, "baseline")
    if args.device == "cpu" and "diffloss_bf16" in args.configs:
        print("note: bf16 autocast on CPU is often slower than fp32; it is meant for GPUs")
    print(f"device {args.device}, batch {args.batch}, GT patch {args.patch}, {args.iters} timed iterations "
          f"after {args.warmup} warm-up", flush=True)

    ctx = mp.get_context("spawn")
    rows = {}
    for name in args.configs:
        results = ctx.Queue()
        proc = ctx.Process(target=run_config, args=(name, args, results))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            sys.exit(f"configuration {name} failed (exit code {proc.exitcode})")
        _, ms, peak = results.get()
        rows[name] = (ms, peak)

    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    base_ms, base_peak = rows["baseline"]
    print(f"\n{'configuration':<20}{'ms/iter':>10}{'x base':>8}{memory:>16}{'x base':>8}")
    for name, (ms, peak) in rows.items():
        print(f"{name:<20}{ms:>10.1f}{ms / base_ms:>8.2f}{peak:>16.0f}{peak / base_peak:>8.2f}")


if __name__ == "__main__":
    main()
