"""Write the option files that train DiffIR (stage one, then stage two) on a folder of photos.

    python -m diffir.make_options my_photos/                 # or: diffir-make-options my_photos/
    python train.py -opt options/own/train_my_photos_S1.yml
    python train.py -opt options/own/train_my_photos_S2.yml
    python inference.py -i photo.png -o out/ -m experiments/my_photos_S2/models/net_g_latest.pth

The files are the demo's (``options/demo/train_demo_DiffIRS{1,2}_x4.yml``: bicubic SR, LR images
made from the photos on the fly) with the photo folder, the scale, the patch size, the network and
the iterations filled in, and the photos split into training and validation images by two
meta-info files (the photos themselves are not copied or changed). See docs/train-your-own.md.
"""
from __future__ import annotations

import argparse
import copy
import math
import random
import sys
from pathlib import Path

import yaml
from basicsr.utils.options import ordered_yaml

from .data.checks import image_size
from .experiment import check_name
from .image_io import list_image_files
from .options import load_yaml
from .utils.atomic import atomic_write_bytes
from .zoo import PRESETS, stage_one

DEMO_OPTIONS = Path(__file__).resolve().parent.parent / "options" / "demo"

# Per machine: the network, the training patch (HR pixels), the batch and the iterations per stage,
# which grow with the number of training photos (``per_photo``) between ``min`` and ``max``.
# CPU: the demo's recipe (1000 iterations for its 6 photos, minutes on 2 cores). GPU: the paper's
# network and patch; the iteration range is a starting point for a few hundred photos, not a
# measured optimum (the paper trains 1M iterations on 3450 images with 8 GPUs).
MACHINES = {
    "cpu": dict(network="demo", gt_size=64, batch=4, per_photo=170, min=1000, max=10000),
    "gpu": dict(network="paper", gt_size=256, batch=8, per_photo=500, min=20000, max=300000),
}
NETWORKS = ("demo", "paper")
SCALES = (2, 4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="diffir-make-options", description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", help="folder of high-quality photos (PNG, JPEG, ...; not searched recursively)")
    parser.add_argument("--name", help="experiment name (default: the folder's name); runs go to "
                                       "experiments/<name>_S1 and experiments/<name>_S2")
    parser.add_argument("-o", "--out", default="options/own", help="folder for the option and meta-info files")
    parser.add_argument("-s", "--scale", type=int, choices=SCALES, default=4, help="super-resolution scale")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="machine to size the run for (auto: a GPU when CUDA is available)")
    parser.add_argument("--network", choices=NETWORKS, help="demo: the tiny demo DIRformer (dim 16); "
                                                            "paper: the paper's (dim 64, 41 blocks)")
    parser.add_argument("--iters", type=int, help="iterations per stage (default: from the photo count)")
    parser.add_argument("--gt-size", type=int, help="training patch size in HR pixels")
    parser.add_argument("--batch-size", type=int, help="batch size per GPU (or on the CPU)")
    parser.add_argument("--val-count", type=int, help="photos held out for validation (default: 10%%, 1 to 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training/validation split and training")
    parser.add_argument("--force", action="store_true", help="overwrite existing option files of this name")
    return parser.parse_args(argv)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "gpu" if torch.cuda.is_available() else "cpu"


def split_photos(names: list[str], val_count: int | None, seed: int) -> tuple[list[str], list[str]]:
    """(training, validation) names: ``val_count`` photos drawn with ``seed``, the rest for training."""
    if len(names) < 2:
        raise ValueError(f"need at least 2 photos (1 to train on, 1 to validate), found {len(names)}")
    if val_count is None:
        val_count = min(20, max(1, round(0.1 * len(names))))
    if not 1 <= val_count < len(names):
        raise ValueError(f"--val-count must be between 1 and {len(names) - 1} for {len(names)} photos")
    val = set(random.Random(seed).sample(names, val_count))
    return [n for n in names if n not in val], [n for n in names if n in val]


def patch_size(requested: int, smallest: tuple[str, int]) -> int:
    """The training patch: ``requested`` (checked), or reduced to fit the smallest photo.

    The LR patch (``gt_size / scale``) must be a multiple of 8, the DIRformer's size multiple at x4
    (x2 pixel-unshuffles the LR by 2 first, so 16 there): the HR patch is a multiple of 32.
    """
    step = 32
    name, side = smallest
    size = min(requested, side // step * step)
    if size < step:
        raise ValueError(f"{name} is {side} pixels on its short side; training photos need at least {step}")
    if requested % step:
        raise ValueError(f"--gt-size {requested} must be a multiple of {step}")
    return size


def network_for(kind: str, template: dict, scale: int) -> dict:
    """Stage-two network options: the demo template's, or the paper's SR preset, at ``scale``."""
    if kind == "paper":
        return {**PRESETS[f"sr-x{scale}"], "scale": scale}
    return {**template, "scale": scale}


def build(args: argparse.Namespace) -> tuple[str, dict[str, str | dict]]:
    """The experiment name and {file name: content} of the option and meta-info files (nothing written)."""
    photos_dir = Path(args.photos).resolve()
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"photo folder not found: {args.photos}")
    name = args.name or photos_dir.name
    try:
        check_name(name, "--name")
    except ValueError:
        raise ValueError(f"--name must be a single folder name, got {name!r}") from None
    photos = list_image_files(photos_dir)
    sizes = {}
    for path in photos:
        try:
            sizes[path.name] = image_size(path)
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err}") from err
    train, val = split_photos(sorted(sizes), args.val_count, args.seed)

    machine = MACHINES[pick_device(args.device)]
    smallest = min(((n, min(sizes[n])) for n in train), key=lambda item: item[1])
    gt_size = patch_size(args.gt_size or machine["gt_size"], smallest)
    too_small = [n for n in val if min(sizes[n]) < args.scale]
    if too_small:
        raise ValueError(f"validation photos smaller than the scale: {', '.join(too_small)}")
    iters = args.iters or min(machine["max"], max(machine["min"], machine["per_photo"] * len(train)))
    if iters < 2:
        raise ValueError("--iters must be at least 2")
    checkpoint_every = max(1, iters // 4)

    files: dict[str, str | dict] = {f"{name}_train.txt": "".join(f"{n}\n" for n in train),
                                    f"{name}_val.txt": "".join(f"{n}\n" for n in val)}
    out = Path(args.out).resolve()
    network = network_for(args.network or machine["network"],
                          load_yaml(str(DEMO_OPTIONS / "train_demo_DiffIRS2_x4.yml"))["network_g"], args.scale)
    for stage in (1, 2):
        opt = load_yaml(str(DEMO_OPTIONS / f"train_demo_DiffIRS{stage}_x4.yml"))
        stage_name = f"{name}_S{stage}"
        opt.update(name=stage_name, scale=args.scale, manual_seed=args.seed,
                   num_gpu="auto" if machine is MACHINES["gpu"] else 0)
        for split, listed in (("train", f"{name}_train.txt"), ("val", f"{name}_val.txt")):
            dataset = opt["datasets"][split]
            dataset.update(name=f"{name}_{split}", dataroot_gt=str(photos_dir), meta_info=str(out / listed))
        opt["datasets"]["train"].update(gt_size=gt_size, batch_size_per_gpu=args.batch_size or machine["batch"],
                                        # about 100 samples per "epoch", however few the photos
                                        dataset_enlarge_ratio=max(1, math.ceil(100 / len(train))))
        if stage == 1:
            opt["network_g"] = stage_one(copy.deepcopy(network))
        else:
            opt["network_g"], opt["network_S1"] = copy.deepcopy(network), stage_one(copy.deepcopy(network))
            s1_weights = f"experiments/{name}_S1/models/net_g_latest.pth"
            opt["path"].update(pretrain_network_g=s1_weights, pretrain_network_S1=s1_weights)
            opt["train"]["encoder_iter"] = max(1, iters // 5)  # the demo's share: 200 of 1000
        opt["train"].update(total_iter=iters)
        opt["train"]["scheduler"]["milestones"] = [max(1, iters * 7 // 10)]  # the demo's: 700 of 1000
        opt["val"].update(val_freq=checkpoint_every, save_img=True)
        for metric in opt["val"]["metrics"].values():
            metric["crop_border"] = args.scale
        opt["logger"].update(print_freq=max(1, min(100, iters // 10)), save_checkpoint_freq=checkpoint_every)
        files[f"train_{name}_S{stage}.yml"] = opt
    return name, files


def render(content: str | dict, header: str) -> bytes:
    if isinstance(content, str):
        return content.encode()
    return (header + yaml.dump(content, Dumper=ordered_yaml()[1], sort_keys=False, default_flow_style=None)).encode()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        name, files = build(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    existing = [str(out / f) for f in files if (out / f).exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} already exist(s); pass --force to overwrite", file=sys.stderr)
        return 2
    header = f"# Written by diffir-make-options for {Path(args.photos).resolve()} (see docs/train-your-own.md)\n"
    for file_name, content in files.items():
        atomic_write_bytes(out / file_name, render(content, header))
    s1 = files[f"train_{name}_S1.yml"]
    print(f"{len(files[f'{name}_train.txt'].split())} training / {len(files[f'{name}_val.txt'].split())} "
          f"validation photos, x{s1['scale']}, patches {s1['datasets']['train']['gt_size']} px, "
          f"{s1['train']['total_iter']} iterations per stage. Next:\n"
          f"  python train.py -opt {out / f'train_{name}_S1.yml'}\n"
          f"  python train.py -opt {out / f'train_{name}_S2.yml'}\n"
          f"  python inference.py -i PHOTO -o out/ -m experiments/{name}_S2/models/net_g_latest.pth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
