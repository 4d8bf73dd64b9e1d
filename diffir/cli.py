"""The ``inference.py`` command line: restore a file, a folder or a glob of images with a Restorer.

Every readable image is restored and written (atomically) to the output folder; a file that cannot
be read, has no mask, or fails to restore is reported by name and skipped. The exit status is 0 when
every image was restored, 1 when any failed, 2 for a bad command line or a model that cannot load.
"""
from __future__ import annotations

import argparse
import glob
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .image_io import (IMAGE_EXTENSIONS, ImageReadError, is_image_file, list_image_files, read_image, read_mask,
                       write_image)
from .restorer import NETWORK_TASK, Restorer, check_task, default_scale
from .utils.compile import MODES
from .zoo import DEFAULT_MODELS, ZOO

TASKS = tuple(NETWORK_TASK)
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference.py", description="Restore images with a DiffIR stage-two model.",
        epilog=f"zoo models (-m NAME): {', '.join(ZOO)}")
    parser.add_argument("-i", "--input", required=True, help="an image file, a folder, or a glob pattern")
    parser.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    parser.add_argument("-m", "--model", help="checkpoint file or zoo name (default: the task's zoo model)")
    parser.add_argument("--opt", help="option YAML whose network_g describes the network, or a preset name "
                                      "(default: inferred from the checkpoint)")
    parser.add_argument("--task", choices=TASKS, help="what the model does (default: sr, or the model's own)")
    parser.add_argument("-s", "--scale", type=int, choices=(1, 2, 4), help="SR scale (checked against the model)")
    parser.add_argument("--tile", type=int, default=0, help="tile side in input pixels, 0 = whole image")
    parser.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    parser.add_argument("--seed", type=int, default=0, help="seed of the diffusion's initial noise; -1 = random")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--half", action="store_true", help="fp16 autocast (fp32 re-run on NaN/inf)")
    precision.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fp32 re-run on NaN/inf)")
    parser.add_argument("--batch", type=int, default=1, help="images of equal size restored together")
    parser.add_argument("--compile", nargs="?", const="default", choices=MODES, metavar="MODE",
                        help="torch.compile the network (MODE: default, reduce-overhead = CUDA graphs, max-autotune, "
                             "max-autotune-no-cudagraphs); pays off on many images of one size")
    parser.add_argument("--model2", help="second checkpoint (same architecture) to blend towards")
    parser.add_argument("--blend", type=float, help="weight of --model2 in [0, 1]: 0 = --model, 1 = --model2")
    parser.add_argument("--mask", help="inpainting: mask file, or folder of masks named like the images "
                                       "(NAME.* or NAME_mask.*); white = hole")
    parser.add_argument("--ext", default="auto", help="output format: auto (as the input), png, jpg ...")
    parser.add_argument("--suffix", default="", help="appended to output file names")
    parser.add_argument("--param-key", default="params_ema", help="checkpoint key of the weights")
    return parser


def collect_inputs(spec: str) -> list[Path]:
    """Image files named by a file, a folder (not recursive) or a glob pattern, sorted."""
    path = Path(spec)
    if path.is_dir():
        return list_image_files(path)
    if path.is_file():
        return [path]
    if any(c in spec for c in "*?["):
        return sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file() and is_image_file(p))
    raise FileNotFoundError(f"input {spec!r} is not a file, a folder or a glob pattern that exists")


def mask_finder(mask_spec: Path) -> Callable[[Path], Path]:
    """``find(image)``: the mask file itself, or in the mask folder the first ``NAME.*`` image in name
    order, else the first ``NAME_mask.*``. The folder is listed once for all images."""
    if mask_spec.is_file():
        return lambda image: mask_spec
    names = sorted(p.name for p in mask_spec.iterdir() if is_image_file(p)) if mask_spec.is_dir() else []
    first_named = {}  # PREFIX -> the first name that is PREFIX.*
    for name in names:  # in name order, so setdefault keeps the first match
        for dot in re.finditer(r"\.", name):
            first_named.setdefault(name[:dot.start()], name)

    def find(image: Path) -> Path:
        for stem in (image.stem, f"{image.stem}_mask"):
            if stem in first_named:
                return mask_spec / first_named[stem]
        raise FileNotFoundError(f"no mask for {image.name} in {mask_spec} (expected {image.stem}.png or "
                                f"{image.stem}_mask.png)")

    return find


@dataclass
class _Job:
    source: Path
    target: Path
    image: np.ndarray
    mask: np.ndarray | None


class _Failures:
    def __init__(self):
        self.items: list[tuple[Path, str]] = []

    def add(self, path: Path, reason: str) -> None:
        self.items.append((path, reason))
        tqdm.write(f"FAILED {path}: {reason}", file=sys.stderr)


def _output_path(source: Path, args) -> Path:
    ext = source.suffix.lower() if args.ext == "auto" else "." + args.ext.lower().lstrip(".")
    return Path(args.output) / f"{source.stem}{args.suffix}{ext}"


def _resolve_task(args, restorer: Restorer) -> None:
    check_task(restorer, args.task, args.scale)
    if restorer.task == "inpaint" and not args.mask:
        raise ValueError("the model does inpainting: give --mask (a file or a folder of masks)")


def _load_restorer(args) -> Restorer:
    model = args.model
    if model is None:
        task = args.task or "sr"
        scale = args.scale or default_scale(task)
        if (task, scale) not in DEFAULT_MODELS:
            raise ValueError(f"no default model for --task {task} --scale {scale}; pass -m")
        model = DEFAULT_MODELS[(task, scale)]
    if (args.model2 is None) != (args.blend is None):
        raise ValueError("--blend and --model2 go together: --model2 B --blend ALPHA")
    precision = "fp16" if args.half else "bf16" if args.bf16 else "fp32"
    return Restorer.from_pretrained(model, options=args.opt, model2=args.model2, blend=args.blend or 0.0,
                                    param_key=args.param_key, device=args.device,
                                    precision=precision, tile=args.tile or None, tile_overlap=args.tile_overlap,
                                    compile=args.compile)


def _restore_group(restorer: Restorer, jobs: list[_Job], seed, failures: _Failures) -> int:
    """Restore jobs of one size together (one by one if the batch fails); returns how many were written."""
    try:
        masks = None if jobs[0].mask is None else [job.mask for job in jobs]
        outputs = restorer.restore_batch([job.image for job in jobs], masks, seed)
    except Exception as err:  # one bad image must not stop the others
        if len(jobs) > 1:
            return sum(_restore_group(restorer, [job], seed, failures) for job in jobs)
        failures.add(jobs[0].source, f"restoration failed: {err}")
        return 0
    written = 0
    for job, output in zip(jobs, outputs):
        try:
            write_image(job.target, output)
            written += 1
        except (OSError, ValueError) as err:
            failures.add(job.source, f"cannot write {job.target}: {err}")
    return written


def _read_jobs(inputs: list[Path], args, find_mask: Callable[[Path], Path] | None, failures: _Failures,
               progress: tqdm):
    """Read each input (and its mask, when ``find_mask`` is given); unreadable ones are reported and skipped."""
    input_paths = {p.resolve() for p in inputs}
    taken: dict[Path, Path] = {}
    for source in inputs:
        target = _output_path(source, args)
        try:
            if target.resolve() in input_paths:
                raise ValueError(f"output {target} would overwrite an input; choose another -o or --suffix")
            if target in taken:
                raise ValueError(f"output {target} is also the output of {taken[target]}; use --ext or --suffix")
            taken[target] = source
            mask = read_mask(find_mask(source)) if find_mask else None
            yield _Job(source, target, read_image(source), mask)
        except ImageReadError as err:  # the image itself, or its mask (then named)
            failures.add(source, err.reason if err.path == source else str(err))
            progress.update(1)
        except (OSError, ValueError) as err:
            failures.add(source, str(err))
            progress.update(1)


def _same_size_groups(jobs, batch: int):
    """Consecutive jobs of one image size, at most ``batch`` at a time."""
    group: list[_Job] = []
    for job in jobs:
        if group and (len(group) == batch or job.image.shape[:2] != group[0].image.shape[:2]):
            yield group
            group = []
        group.append(job)
    if group:
        yield group


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        print("error: --batch must be at least 1", file=sys.stderr)
        return 2
    try:
        inputs = collect_inputs(args.input)
        if not inputs:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {args.input}")
        restorer = _load_restorer(args)
        _resolve_task(args, restorer)
        find_mask = mask_finder(Path(args.mask)) if args.mask else None
    except Exception as err:  # bad command line, missing model, checkpoint mismatch: one clear line
        print(f"error: {err}", file=sys.stderr)
        return 2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # decoder noise; failures are reported below
    seed = None if args.seed < 0 else args.seed
    failures = _Failures()
    with tqdm(total=len(inputs), unit="img", desc="restoring") as progress:
        written = 0
        for group in _same_size_groups(_read_jobs(inputs, args, find_mask, failures, progress), args.batch):
            written += _restore_group(restorer, group, seed, failures)
            progress.update(len(group))

    print(f"restored {written} of {len(inputs)} images into {args.output}", file=sys.stderr)
    if restorer.fp32_fallbacks:
        print(f"{restorer.fp32_fallbacks} batch(es) gave NaN/inf in reduced precision and were re-run in fp32",
              file=sys.stderr)
    if failures.items:
        print(f"{len(failures.items)} failed:", file=sys.stderr)
        for path, reason in failures.items:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """``diffir-export``: write a stage-two checkpoint as ONNX and check it against PyTorch."""
    parser = argparse.ArgumentParser(prog="diffir-export", description="Export a DiffIR stage-two model to ONNX.")
    parser.add_argument("-m", "--model", required=True, help="checkpoint file or zoo name")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opt", help="option YAML with network_g, or a preset name (default: inferred)")
    parser.add_argument("--seed", type=int, help="bake this seed's initial noise in (default: noise is an input)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--param-key", default="params_ema")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    args = parser.parse_args(argv)

    import torch

    from .export import check_onnx, export_onnx
    from .restorer import initial_noise

    try:
        net = Restorer.from_pretrained(args.model, options=args.opt, param_key=args.param_key, device="cpu").net
        export_onnx(net, args.output, seed=args.seed, opset=args.opset)
    except Exception as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}", file=sys.stderr)
    if args.no_check:
        return 0
    try:
        for height, width in ((2 * net.size_multiple, 3 * net.size_multiple), (37, 29)):
            lq = torch.rand(1, net.inp_channels, height, width, generator=torch.Generator().manual_seed(0))
            diff = check_onnx(args.output, net, lq, noise=initial_noise(1, 0), seed=args.seed)
            print(f"ONNX vs PyTorch at {height}x{width}: max |difference| = {diff:.2e}", file=sys.stderr)
    except ImportError as err:
        print(f"not checked: {err}", file=sys.stderr)
    return 0
