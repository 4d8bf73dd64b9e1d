"""``benchmarks/benchmark.py``: evaluate a model on benchmark sets from an option file or the command line.

    python benchmarks/benchmark.py -opt options/test/test_DiffIRS2_x4.yml
    python benchmarks/benchmark.py -m sisr-gan-x4 --lq Set14/LR --gt Set14/HR --name Set14
    python benchmarks/benchmark.py --restored my_outputs/ --gt Set14/HR --name Set14 --task sr -s 4

Exit status: 0 when every image was scored, 1 when some failed, 2 for bad arguments or a model
that cannot load.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli import TASKS, clean_message
from ..version import __version__

if TYPE_CHECKING:
    from .suite import BenchmarkSet

# torch, basicsr and the metrics load in main(), after parsing: --help and argument errors answer at once

def build_parser() -> argparse.ArgumentParser:
    # prog: argparse's default, the name the command was started by (benchmark.py, diffir-benchmark)
    parser = argparse.ArgumentParser(description="Benchmark a DiffIR model.")
    parser.add_argument("--version", action="version", version=f"%(prog)s (diffir {__version__})")
    parser.add_argument("-opt", help="basicsr option file: datasets (dataroot_lq / dataroot_gt / filename_tmpl), "
                                     "network_g and path.pretrain_network_g")
    parser.add_argument("-m", "--model", help="checkpoint file or zoo name (overrides the option file's)")
    parser.add_argument("--network", help="network options: a YAML with network_g, or a preset name")
    parser.add_argument("--lq", help="folder of LQ images (one set from the command line)")
    parser.add_argument("--gt", help="folder of ground truths paired by name (optional)")
    parser.add_argument("--mask", help="inpainting: folder of masks (default: NAME_mask*.png next to the images)")
    parser.add_argument("--name", help="name of the command-line set (matched to the paper's sets)")
    parser.add_argument("--filename-tmpl", default="{}", help="LQ stem from GT stem, e.g. '{}x4'")
    parser.add_argument("--restored", help="score existing outputs in this folder instead of running a model")
    parser.add_argument("--task", choices=TASKS, help="needed with --restored (else the model's)")
    parser.add_argument("-s", "--scale", type=int, default=None, help="SR scale, needed with --restored")
    parser.add_argument("-o", "--output", default="results/benchmark", help="output folder")
    parser.add_argument("--metrics", help="comma-separated: psnr,ssim,lpips,niqe,fid (default: the task's)")
    parser.add_argument("--crop-border", type=int, help="override the task's crop border")
    parser.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone (default: alex)")
    parser.add_argument("--lpips-weights", help="torchvision AlexNet/VGG16 weights (default: torch hub cache)")
    parser.add_argument("--fid-weights", help="Inception weights for FID (pytorch-fid's pt_inception-*.pth)")
    parser.add_argument("--crops", action="store_true", help="save LQ | output | GT comparison crops")
    parser.add_argument("--crop-size", type=int, default=128, help="side of the comparison crops (default: 128)")
    parser.add_argument("--seeds", type=int, default=0, help="stochasticity report: restore with this many seeds")
    parser.add_argument("--stochastic-images", type=int, default=1, help="images per set for the report")
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion's initial noise")
    parser.add_argument("--tile", type=int, default=0, help="tile side in input pixels, 0 = whole image")
    parser.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--half", action="store_true", help="fp16 autocast with fp32 fallback")
    return parser


def sets_from_options(opt: dict) -> tuple[list[BenchmarkSet], list[str]]:
    """Benchmark sets from the ``datasets`` block of a basicsr option file, and notes on skipped ones."""
    from .suite import BenchmarkSet

    sets, skipped = [], []
    for key, dataset in (opt.get("datasets") or {}).items():
        if key.startswith("train"):
            continue
        name = dataset.get("name", key)
        if not dataset.get("dataroot_lq"):
            skipped.append(f"{name}: no dataroot_lq (sets that synthesise their LQ images are not benchmarked here)")
            continue
        sets.append(BenchmarkSet(name, Path(dataset["dataroot_lq"]),
                                 Path(dataset["dataroot_gt"]) if dataset.get("dataroot_gt") else None,
                                 Path(dataset["dataroot_mask"]) if dataset.get("dataroot_mask") else None,
                                 dataset.get("filename_tmpl", "{}")))
    return sets, skipped


def _setup(args):
    """(sets, notes, restorer or None, task, scale, method: the model or outputs scored) from the arguments."""
    from ..options import load_yaml
    from ..restorer import NETWORK_TASK, Restorer, check_task, default_scale
    from .suite import BenchmarkSet

    opt = load_yaml(args.opt) if args.opt else {}
    sets, notes = sets_from_options(opt)
    if args.lq:
        sets.append(BenchmarkSet(args.name or Path(args.lq).name, Path(args.lq), Path(args.gt) if args.gt else None,
                                 Path(args.mask) if args.mask else None, args.filename_tmpl))
    elif args.restored and args.gt:  # scoring outputs: the GT folder names the images
        sets.append(BenchmarkSet(args.name or Path(args.gt).name, Path(args.gt), Path(args.gt), None, "{}"))
    if not sets:
        raise ValueError("no benchmark set: give -opt with datasets, or --lq (and --gt)")
    if args.restored:
        if not args.task:
            raise ValueError("--restored needs --task (and --scale for SR)")
        task = NETWORK_TASK[args.task]
        scale = args.scale or default_scale(task)
        return sets, notes, None, task, scale, args.restored
    model = args.model or (opt.get("path") or {}).get("pretrain_network_g")
    if not model:
        raise ValueError("no model: give -m, or path.pretrain_network_g in the option file")
    network = args.network or opt.get("network_g")
    param_key = (opt.get("path") or {}).get("param_key_g", "params_ema")
    restorer = Restorer.from_pretrained(model, options=network, param_key=param_key, device=args.device,
                                        precision="fp16" if args.half else "fp32", tile=args.tile or None,
                                        tile_overlap=args.tile_overlap)
    check_task(restorer, args.task, args.scale)
    return sets, notes, restorer, restorer.task, restorer.scale, str(model)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..image_io import read_image, read_mask
    from .suite import Benchmark, stochasticity, write_summary

    try:
        sets, notes, restorer, task, scale, method = _setup(args)
        benchmark = Benchmark(task, scale, args.metrics.split(",") if args.metrics else None,
                              crop_border=args.crop_border, lpips_net=args.lpips_net,
                              lpips_weights=args.lpips_weights, fid_weights=args.fid_weights,
                              device="cpu" if restorer is None else str(restorer.device),
                              crops=args.crops, crop_size=args.crop_size)
    except Exception as err:  # arguments, option file, model or metric weights: one clear line
        print(f"error: {clean_message(err)}", file=sys.stderr)
        return 2
    benchmark.notes += notes

    results, reports = [], []
    for bset in sets:
        print(f"{bset.name} ...", file=sys.stderr)
        result = benchmark.run_set(bset, args.output, restorer=restorer, restored_dir=args.restored, seed=args.seed)
        results.append(result)
        if restorer is not None and args.seeds > 1:
            for sample in result.samples[:args.stochastic_images]:
                report = stochasticity(restorer, read_image(sample.lq), list(range(args.seeds)),
                                       read_mask(sample.mask) if sample.mask else None,
                                       read_image(sample.gt) if sample.gt else None, benchmark)
                reports.append({"set": bset.name, "image": sample.name, **report})
    markdown = write_summary(args.output, results, benchmark, f"Benchmark of {method} ({task} x{scale})", reports,
                             method)
    print(markdown.read_text())
    failed = sum(len(r.failures) for r in results)
    if failed:
        print(f"{failed} image(s) failed; see the notes in {markdown}", file=sys.stderr)
    return 1 if failed else 0
