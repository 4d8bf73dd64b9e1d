"""Prepare training and test folders in the layout diffir's option files expect (docs/datasets.md).

Sub-commands:

  bicubic    LR images by MATLAB-style bicubic downsampling (HR mod-cropped to the scale first),
             same file names as the HR images
  subimages  overlapping crops of large images for fast loading (BasicSR's naming: NAME_s001.png ...)
  meta       a meta-info file listing images relative to a root folder (RealESRGANDataset's meta_info)
  gopro      GoPro training patches (512 x 512, overlap 256) and the 256 x 256 centre-crop validation set

Every image is written to a temporary file and renamed, so an interrupted run leaves no partial files.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import diffir  # noqa: E402,F401  (basicsr compatibility alias before basicsr imports)
from basicsr.data.transforms import mod_crop  # noqa: E402
from basicsr.utils import scandir  # noqa: E402

from diffir.data.hr_bicubic_dataset import bicubic_downsample  # noqa: E402
from diffir.utils.atomic import atomic_write_bytes  # noqa: E402


def write_image(path: str, img: np.ndarray) -> None:
    ok, data = cv2.imencode(osp.splitext(path)[1], img)
    if not ok:
        raise OSError(f"could not write {path}")
    atomic_write_bytes(path, data.tobytes())


def read_image(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {path}")
    return img


def images_in(folder: str) -> list[str]:
    if not osp.isdir(folder):
        raise SystemExit(f"input folder {folder} does not exist")
    return sorted(scandir(folder, full_path=True))


def run_all(function, jobs: list[tuple], workers: int) -> int:
    """Run ``function(*job)`` for every job; returns the total of their results (files written)."""
    if workers <= 1 or not jobs:
        return sum(function(*job) for job in jobs)
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(function, *zip(*jobs)))  # a worker's error is raised here


# ---------------------------------------------------------------------------------------- bicubic
def bicubic_one(hr_path: str, out_dir: str, scale: int) -> int:
    img = mod_crop(read_image(hr_path), scale)
    lr = bicubic_downsample(img.astype(np.float32) / 255.0, scale)
    name = osp.splitext(osp.basename(hr_path))[0] + ".png"
    write_image(osp.join(out_dir, name), np.round(lr * 255).astype(np.uint8))
    return 1


# -------------------------------------------------------------------------------------- subimages
def crop_starts(length: int, crop: int, step: int) -> list[int]:
    """Window starts every ``step`` pixels, plus one flush with the far edge if the last falls short."""
    if length < crop:
        return []
    starts = list(range(0, length - crop + 1, step))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


def subimages_one(path: str, out_dir: str, crop: int, step: int) -> int:
    img = read_image(path)
    stem, ext = osp.splitext(osp.basename(path))
    index = 0
    for top in crop_starts(img.shape[0], crop, step):
        for left in crop_starts(img.shape[1], crop, step):
            index += 1
            write_image(osp.join(out_dir, f"{stem}_s{index:03d}{ext}"), img[top:top + crop, left:left + crop])
    return index


# ------------------------------------------------------------------------------------------ gopro
def gopro_train_one(blur_path: str, sharp_path: str, out_root: str, patch: int, overlap: int) -> int:
    """Writes blurry/sharp patch pairs; returns the number of pairs."""
    blur, sharp = read_image(blur_path), read_image(sharp_path)
    if blur.shape != sharp.shape:
        raise ValueError(f"{blur_path} and {sharp_path} differ in size: {blur.shape} vs {sharp.shape}")
    stem = osp.splitext(osp.basename(blur_path))[0]
    index = 0
    for top in crop_starts(blur.shape[0], patch, patch - overlap):
        for left in crop_starts(blur.shape[1], patch, patch - overlap):
            index += 1
            window = (slice(top, top + patch), slice(left, left + patch))
            write_image(osp.join(out_root, "input_crops", f"{stem}-{index}.png"), blur[window])
            write_image(osp.join(out_root, "target_crops", f"{stem}-{index}.png"), sharp[window])
    return index


def gopro_val_one(blur_path: str, sharp_path: str, out_root: str, size: int) -> int:
    blur, sharp = read_image(blur_path), read_image(sharp_path)
    top, left = (blur.shape[0] - size) // 2, (blur.shape[1] - size) // 2
    window = (slice(top, top + size), slice(left, left + size))
    name = osp.splitext(osp.basename(blur_path))[0] + ".png"
    write_image(osp.join(out_root, "input_crops", name), blur[window])
    write_image(osp.join(out_root, "target_crops", name), sharp[window])
    return 1


def paired_files(root: str) -> list[tuple[str, str]]:
    inputs, targets = images_in(osp.join(root, "input")), images_in(osp.join(root, "target"))
    if [osp.basename(p) for p in inputs] != [osp.basename(p) for p in targets]:
        raise SystemExit(f"{root}/input and {root}/target must hold the same file names")
    return list(zip(inputs, targets))


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help=f"processes writing images (default: the CPU count, {os.cpu_count()})")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("bicubic", help="LR images by MATLAB-style bicubic downsampling")
    p.add_argument("--input", required=True, help="folder of HR images")
    p.add_argument("--output", required=True, help="folder for the LR images (same names, PNG)")
    p.add_argument("--scale", type=int, required=True, help="downsampling factor, e.g. 4")
    p = commands.add_parser("subimages", help="overlapping crops of large images")
    p.add_argument("--input", required=True, help="folder of large images")
    p.add_argument("--output", required=True, help="folder for the crops (NAME_s001.EXT ...)")
    p.add_argument("--crop", type=int, required=True, help="crop side in pixels")
    p.add_argument("--step", type=int, required=True, help="pixels between crop starts (crop - overlap)")
    p = commands.add_parser("meta", help="a meta-info file listing images relative to a root folder")
    p.add_argument("--root", required=True, help="the dataset's dataroot_gt")
    p.add_argument("--folders", nargs="+", required=True, help="sub-folders of --root to list")
    p.add_argument("--output", required=True, help="the meta-info text file to write")
    p = commands.add_parser("gopro", help="GoPro training patches and the centre-crop validation set")
    p.add_argument("--train", required=True, help="folder with input/ (blurry) and target/ (sharp) training images")
    p.add_argument("--test", required=True, help="GoPro test folder with input/ and target/")
    p.add_argument("--output", required=True, help="gets train_crops/ and val/")
    p.add_argument("--patch", type=int, default=512, help="training patch side (default: 512)")
    p.add_argument("--overlap", type=int, default=256, help="overlap of neighbouring patches (default: 256)")
    p.add_argument("--val_size", type=int, default=256, help="side of the validation centre crops (default: 256)")
    args = parser.parse_args(argv)

    if args.command == "bicubic":
        os.makedirs(args.output, exist_ok=True)
        count = run_all(bicubic_one, [(p, args.output, args.scale) for p in images_in(args.input)], args.workers)
        print(f"wrote {count} x{args.scale} bicubic LR images to {args.output}")
    elif args.command == "subimages":
        os.makedirs(args.output, exist_ok=True)
        inputs = images_in(args.input)
        count = run_all(subimages_one, [(p, args.output, args.crop, args.step) for p in inputs], args.workers)
        print(f"wrote {count} {args.crop}x{args.crop} sub-images of {len(inputs)} images to {args.output}")
    elif args.command == "meta":
        lines = [osp.join(folder, name) for folder in args.folders
                 for name in sorted(scandir(osp.join(args.root, folder)))]
        atomic_write_bytes(args.output, "".join(f"{line}\n" for line in lines).encode())
        print(f"wrote {args.output}: {len(lines)} images under {args.root}")
    else:
        train_out, val_out = osp.join(args.output, "train_crops"), osp.join(args.output, "val")
        for folder in (train_out, val_out):
            for sub in ("input_crops", "target_crops"):
                os.makedirs(osp.join(folder, sub), exist_ok=True)
        pairs = run_all(gopro_train_one, [(b, s, train_out, args.patch, args.overlap)
                                          for b, s in paired_files(args.train)], args.workers)
        print(f"wrote {pairs} training patch pairs to {train_out} (input_crops/, target_crops/)")
        pairs = run_all(gopro_val_one, [(b, s, val_out, args.val_size) for b, s in paired_files(args.test)],
                        args.workers)
        print(f"wrote {pairs} validation pairs to {val_out} (input_crops/, target_crops/)")


if __name__ == "__main__":
    main()
