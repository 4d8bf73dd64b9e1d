"""The ``inference.py`` / ``diffir-restore`` command line: restore a file, a folder or a glob of images.

Every readable image is restored and written (atomically) to the output folder; a file that cannot
be read, has no mask, or fails to restore is reported by name and skipped. Outputs that already exist
are kept and reported as skipped, so a folder job that was stopped continues where it stopped
(``--overwrite`` replaces them). Under ``torchrun`` the sorted file list is split round-robin over
the processes (``RANK`` / ``WORLD_SIZE``): each image is restored once, by one process, with the same
seed as in a single-process run (on the CPU the outputs are byte-identical to a one-process run with as many
threads as each process gets, e.g. ``OMP_NUM_THREADS=1``; other thread counts sum in another order,
which can move a few pixels by one level). The exit status is 0 when every image was restored (or skipped),
1 when any failed, 2 for a bad command line or a model that cannot load.

Only the argument parser is built at import; torch, OpenCV and the networks load after parsing, so
``--help``, ``--version`` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import glob
import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .utils.compile import MODES
from .version import __version__
from .zoo import DEFAULT_MODELS, ZOO, ZooEntry, find_model, pretrained_dirs

if TYPE_CHECKING:
    import numpy as np
    from tqdm import tqdm

    from .restorer import Restorer

# --task names, as the zoo uses them (restorer.NETWORK_TASK says which network task each one runs)
TASKS = tuple(dict.fromkeys(entry.task for entry in ZOO.values()))
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ONNX_EXTRA = 'pip install "diffir[onnx]"'


def build_parser() -> argparse.ArgumentParser:
    # prog: argparse's default, the name the command was started by (inference.py, diffir-restore)
    parser = argparse.ArgumentParser(
        description="Restore images with a DiffIR stage-two model.",
        epilog=f"zoo models (-m NAME): {', '.join(ZOO)}. Animated GIFs and multi-page TIFFs: every frame is "
               "restored and written as NAME_frame0001.EXT, NAME_frame0002.EXT ... Several processes: "
               "torchrun --nproc_per_node=N inference.py -i FOLDER -o OUT (the files are shared out; "
               "each process uses its own GPU, or a share of the CPU threads).")
    parser.add_argument("--version", action="version", version=f"%(prog)s (diffir {__version__})")
    parser.add_argument("-i", "--input", required=True, help="an image file, a folder, or a glob pattern")
    parser.add_argument("-o", "--output", default="results", help="output folder (default: results)")
    parser.add_argument("-m", "--model", help="checkpoint file or zoo name (default: the task's zoo model; for "
                                              "--task sr that is the small demo model)")
    parser.add_argument("--opt", help="option YAML whose network_g describes the network, or a preset name "
                                      "(default: inferred from the checkpoint)")
    parser.add_argument("--task", choices=TASKS, help="what the model does (default: sr, or the model's own)")
    parser.add_argument("-s", "--scale", type=int, choices=(1, 2, 4), help="SR scale (checked against the model)")
    parser.add_argument("--tile", type=int, default=0, help="tile side in input pixels, 0 = whole image")
    parser.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the diffusion's initial noise, the same for every image; -1 = draw one "
                             "(printed, so the run can be repeated)")
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
                                       "(NAME_mask*.*, else NAME.* in a folder other than the images'; a "
                                       "folder holding both: its NAME_mask*.* files are not restored); "
                                       "white = hole")
    parser.add_argument("--ext", default="auto",
                        help="output format: auto (as the input; GIF becomes PNG, GIF holds 256 colours), png, jpg ...")
    parser.add_argument("--suffix", default="", help="appended to output file names")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that already exist (default: keep them and skip their inputs)")
    parser.add_argument("--param-key", default="params_ema", help="checkpoint key of the weights")
    return parser


def collect_inputs(spec: str) -> list[Path]:
    """Image files named by a file, a folder (not recursive) or a glob pattern, sorted."""
    from .image_io import is_image_file, list_image_files

    path = Path(spec)
    if path.is_dir():
        return list_image_files(path)
    if path.is_file():
        return [path]
    if any(c in spec for c in "*?["):
        return sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file() and is_image_file(p))
    raise FileNotFoundError(f"input {spec!r} is not a file, a folder or a glob pattern that exists")


def mask_finder(mask_spec: Path) -> Callable[[Path], Path]:
    """``find(image)``: the mask file itself, or the image's mask in the mask folder by the one rule of
    :func:`diffir.image_io.mask_lookup` (``NAME_mask*.*`` first, else ``NAME.*`` from another folder).
    The folder is listed once for all images."""
    from .image_io import list_image_files, mask_lookup

    if mask_spec.is_file():
        return lambda image: mask_spec
    folder = mask_spec.resolve()
    # resolved folders, so "an image is never its own mask" holds however the two folders are spelled
    lookup = mask_lookup([folder / p.name for p in list_image_files(mask_spec)] if mask_spec.is_dir() else [])

    def find(image: Path) -> Path:
        mask = lookup(image.parent.resolve() / image.name)
        if mask is None:
            raise FileNotFoundError(f"no mask for {image.name} in {mask_spec} (expected {image.stem}_mask.png, "
                                    f"or {image.stem}.png in a folder other than the image's)")
        return mask_spec / mask.name

    return find


def drop_masks(inputs: list[Path], mask_spec: Path) -> list[Path]:
    """``inputs`` without the masks (``NAME_mask*.*``) of a mask folder that holds the images too."""
    from .image_io import is_mask_name

    if not mask_spec.is_dir():
        return inputs
    folder = mask_spec.resolve()
    return [p for p in inputs if not (is_mask_name(p) and p.parent.resolve() == folder)]


def clean_message(err: BaseException) -> str:
    """An exception as one readable line: terminal colour codes (some libraries add them) removed."""
    return _ANSI_ESCAPE.sub("", str(err))


# ------------------------------------------------------------------------------ processes
@dataclass(frozen=True)
class ProcessShare:
    """This process's place in a torchrun job (rank 0 of 1 when started alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> ProcessShare:
        # torchrun's variables; no process group is needed, the split is a pure function of them
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))

    def take(self, inputs: list[Path]) -> list[Path]:
        """This process's files: every world_size-th of the sorted list, from index rank."""
        return inputs[self.rank::self.world_size]

    @property
    def tag(self) -> str:
        return f"[process {self.rank + 1}/{self.world_size}] " if self.world_size > 1 else ""


def _device_for(share: ProcessShare, device: str) -> str:
    """Each process of a multi-process job on its own GPU (LOCAL_RANK), or a share of the CPU threads."""
    import torch

    if share.world_size == 1:
        return device
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{share.local_rank}"
    if device in ("auto", "cpu"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // share.local_world_size))
    return device


# ------------------------------------------------------------------------------ model
def _demo_entry(model: str) -> ZooEntry | None:
    """The zoo's demo entry when ``model`` is it (by zoo name, or a file with the demo's file name)."""
    for entry in ZOO.values():
        if entry.note.startswith("DEMO") and (model == entry.name or Path(model).name == Path(entry.file).name):
            return entry
    return None


def demo_advice(demo: ZooEntry) -> str:
    """What the demo model is, and how to get an official model for the same job instead."""
    official = [entry for entry in ZOO.values() if entry.task == demo.task and entry.scale == demo.scale
                and entry is not demo and (entry.network or {}).get("type") == "DiffIRS2"][:1]
    real = DEFAULT_MODELS.get(("realsr", demo.scale))
    official += [ZOO[real]] if real else []
    what = demo.note.split(": ", 1)[-1]
    lines = [(f"NOTE: {demo.name} is the bundled DEMO model ({what}); expect soft, demo-quality results. "
              "For real results use an official model:")]
    for entry in official:
        saved = pretrained_dirs()[-1] / entry.file
        converted = saved.with_suffix(".safetensors")
        lines += [f"  -m {entry.name}  ({entry.note})",
                  f"     download {Path(entry.file).name} from {entry.url}",
                  f"     save it as {saved}",
                  f"     or convert it to safetensors: diffir-convert {saved} {converted} and pass -m {converted}"]
    lines.append("  every zoo model: see the end of --help")
    return "\n".join(lines)


def _model_name(args) -> str:
    """-m, else the zoo's default model for --task / --scale."""
    from .restorer import default_scale

    if args.model is not None:
        return args.model
    task = args.task or "sr"
    scale = args.scale or default_scale(task)
    if (task, scale) not in DEFAULT_MODELS:
        raise ValueError(f"no default model for --task {task} --scale {scale}; pass -m")
    return DEFAULT_MODELS[(task, scale)]


def _load_restorer(args, device: str) -> Restorer:
    from .restorer import Restorer

    for model in (args.model, args.model2):
        if model and Path(model).suffix == ".state":
            raise ValueError(f"{model} is a training state (.state), not network weights; use the .pth in "
                             "models/ (e.g. experiments/NAME/models/net_g_latest.pth)")
    if (args.model2 is None) != (args.blend is None):
        raise ValueError("--blend and --model2 go together: --model2 B --blend ALPHA")
    precision = "fp16" if args.half else "bf16" if args.bf16 else "fp32"
    return Restorer.from_pretrained(_model_name(args), options=args.opt, model2=args.model2,
                                    blend=args.blend or 0.0, param_key=args.param_key, device=device,
                                    precision=precision, tile=args.tile or None, tile_overlap=args.tile_overlap,
                                    compile=args.compile)


def describe_run(args, restorer: Restorer) -> str:
    """One line: which model (zoo name and file), task, device, precision and tiles this run uses."""
    name = _model_name(args)
    path, entry = find_model(name)
    model = f"{name} ({path})" if entry is not None else str(path)
    if args.model2 is not None:
        model += f" blended with {args.model2} (weight {args.blend})"
    tiles = (f"{restorer.tile} px tiles, {restorer.tile_overlap} px overlap" if restorer.tile
             else "whole images (no tiles)")
    return (f"model: {model}, {restorer.task} x{restorer.scale} | device: {restorer.device} | "
            f"precision: {restorer.precision} | {tiles}")


# ------------------------------------------------------------------------------ jobs
@dataclass
class _Job:
    source: Path
    target: Path
    image: np.ndarray
    mask: np.ndarray | None


class _Report:
    """Failures (printed as they happen) and outputs skipped because they exist."""

    def __init__(self):
        self.failures: list[tuple[Path, str]] = []
        self.skipped: list[Path] = []

    def fail(self, path: Path, reason: str) -> None:
        from tqdm import tqdm

        self.failures.append((path, reason))
        tqdm.write(f"FAILED {path}: {reason}", file=sys.stderr)


class _TileProgress:
    """``progress(done, total)`` for Restorer: a tile bar under the image bar, shown for tiled images only."""

    def __init__(self, name: str):
        self.name, self.bar = name, None

    def __call__(self, done: int, total: int) -> None:
        if total <= 1:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"tiles of {self.name}", unit="tile", leave=False, position=1)
        self.bar.n = done  # a reduced-precision fallback restarts the count
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _output_path(source: Path, args) -> Path:
    ext = source.suffix.lower() if args.ext == "auto" else "." + args.ext.lower().lstrip(".")
    if ext == ".gif" and args.ext == "auto":
        ext = ".png"  # GIF is 256 colours: a restored image would be quantised
    return Path(args.output) / f"{source.stem}{args.suffix}{ext}"


def frame_path(target: Path, index: int) -> Path:
    """Output of frame ``index`` (from 1) of an animated or multi-page input."""
    return target.with_name(f"{target.stem}_frame{index:04d}{target.suffix}")


def _resolve_task(args, restorer: Restorer) -> None:
    from .restorer import check_task

    check_task(restorer, args.task, args.scale)
    if restorer.task == "inpaint" and not args.mask:
        raise ValueError("the model does inpainting: give --mask (a file or a folder of masks)")


def _restore_group(restorer: Restorer, jobs: list[_Job], seed: int, report: _Report) -> int:
    """Restore jobs of one size together (one by one if the batch fails); returns how many were written."""
    from .image_io import write_image

    progress = _TileProgress(jobs[0].source.name if len(jobs) == 1 else f"{len(jobs)} images")
    try:
        masks = None if jobs[0].mask is None else [job.mask for job in jobs]
        outputs = restorer.restore_batch([job.image for job in jobs], masks, seed, progress=progress)
    except Exception as err:  # one bad image must not stop the others
        if len(jobs) > 1:
            return sum(_restore_group(restorer, [job], seed, report) for job in jobs)
        report.fail(jobs[0].source, f"restoration failed: {clean_message(err)}")
        return 0
    finally:
        progress.close()
    written = 0
    for job, output in zip(jobs, outputs):
        try:
            write_image(job.target, output, consume=True)  # the output is not used again
            written += 1
        except (OSError, ValueError) as err:
            report.fail(job.source, f"cannot write {job.target}: {err}")
    return written


_FRAME_STEM = re.compile(r"(.+)_frame(\d{4,})")


def _frame_clashes(inputs: list[Path], targets: dict[Path, Path], input_paths: set[Path],
                   clash: dict[Path, str]) -> None:
    """Add to ``clash`` the inputs whose output is a frame output of another input (or whose frames would
    replace an input): a plain output or an input named ``NAME_frameNNNN.EXT`` is frame NNNN of the input
    whose output would be ``NAME.EXT``, if that input has at least NNNN (and more than one) frames.
    Only such look-alike names cost a read; the first input in order keeps its output."""
    from .image_io import MULTI_FRAME_EXTENSIONS, ImageReadError, read_frames

    order = {source: index for index, source in enumerate(inputs)}
    owner_of: dict[Path, Path] = {}
    for source in inputs:
        owner_of.setdefault(targets[source].resolve(), source)
    counts: dict[Path, int] = {}

    def frame_count(source: Path) -> int:
        if source.suffix.lower() not in MULTI_FRAME_EXTENSIONS:
            return 1
        if source not in counts:
            try:
                counts[source] = len(read_frames(source))
            except (ImageReadError, OSError):
                counts[source] = 1  # its own read reports it
        return counts[source]

    def frame_owner(path: Path) -> tuple[Path, int] | None:
        match = _FRAME_STEM.fullmatch(path.stem)
        if match is None or int(match[2]) < 1:
            return None
        owner = owner_of.get(path.with_name(match[1] + path.suffix).resolve())
        if owner is None or frame_count(owner) < max(2, int(match[2])):
            return None
        return owner, int(match[2])

    for path in sorted(input_paths):  # a frame written over an input
        found = frame_owner(path)
        if found is not None and found[0] not in clash:
            clash[found[0]] = (f"output {frame_path(targets[found[0]], found[1])} would overwrite the input {path}; "
                               "choose another -o or --suffix")
    for source in inputs:  # a frame and a plain output of the same name
        found = frame_owner(targets[source])
        if found is None or found[0] == source or source in clash or found[0] in clash or frame_count(source) > 1:
            continue
        owner, index = found
        if order[source] > order[owner]:
            clash[source] = (f"output {targets[source]} is also frame {index} of the output of {owner}; "
                             "use --ext or --suffix")
        else:
            clash[owner] = (f"output {targets[source]} (frame {index}) is also the output of {source}; "
                            "use --ext or --suffix")


def _read_jobs(inputs: list[Path], mine: list[Path], args, find_mask: Callable[[Path], Path] | None,
               report: _Report, progress: tqdm):
    """Read each of this process's inputs (and mask); unreadable ones are reported, existing outputs skipped.

    Output name clashes (frame outputs of animated / multi-page inputs included) are checked over all
    ``inputs``, so every process of a job agrees on them.
    """
    from .image_io import MULTI_FRAME_EXTENSIONS, ImageReadError, read_frames, read_mask

    input_paths = {p.resolve() for p in inputs}
    targets = {source: _output_path(source, args) for source in inputs}
    taken: dict[Path, Path] = {}
    clash: dict[Path, str] = {}
    for source in inputs:
        target = targets[source]
        if target.resolve() in input_paths:
            clash[source] = f"output {target} would overwrite an input; choose another -o or --suffix"
        elif target in taken:
            clash[source] = f"output {target} is also the output of {taken[target]}; use --ext or --suffix"
        taken.setdefault(target, source)
    _frame_clashes(inputs, targets, input_paths, clash)
    mine_set = set(mine)
    for source in (s for s in inputs if s in mine_set):
        target = targets[source]
        try:
            if source in clash:
                raise ValueError(clash[source])
            # a file that may hold several frames writes NAME_frameNNNN.EXT, never NAME.EXT: read it first
            multi_frame_format = source.suffix.lower() in MULTI_FRAME_EXTENSIONS
            if not multi_frame_format and target.exists() and not args.overwrite:
                report.skipped.append(target)
                progress.update(1)
                continue
            frames = read_frames(source)
            outputs = [target] if len(frames) == 1 else [frame_path(target, i) for i in range(1, len(frames) + 1)]
            if not args.overwrite and all(path.exists() for path in outputs):
                progress.total += len(outputs) - 1  # the bar counts frames of animated / multi-page files
                report.skipped.extend(outputs)
                progress.update(len(outputs))
                continue
            mask = read_mask(find_mask(source)) if find_mask else None
        except ImageReadError as err:  # the image itself, or its mask (then named)
            report.fail(source, err.reason if err.path == source else str(err))
            progress.update(1)
            continue
        except (OSError, ValueError) as err:
            report.fail(source, str(err))
            progress.update(1)
            continue
        if len(frames) == 1:
            yield _Job(source, target, frames[0], mask)
            continue
        progress.total += len(frames) - 1  # the bar counts frames of animated / multi-page files
        progress.refresh()
        for index, frame in enumerate(frames, 1):
            if frame_path(target, index).exists() and not args.overwrite:
                report.skipped.append(frame_path(target, index))
                progress.update(1)
                continue
            yield _Job(source, frame_path(target, index), frame, mask)


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


def _seed(args, share: ProcessShare) -> int:
    """The seed of every image: --seed, or one drawn for -1 (the same in every process, so not drawn there)."""
    if args.seed >= 0:
        return args.seed
    if share.world_size > 1:
        raise ValueError("--seed -1 would draw a different seed in each process; give --seed N for a "
                         "multi-process run")
    seed = random.SystemRandom().randrange(2 ** 31)
    print(f"seed: {seed} (drawn; --seed {seed} repeats this run)", file=sys.stderr)
    return seed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1:
        print("error: --batch must be at least 1", file=sys.stderr)
        return 2
    share = ProcessShare.from_environment()
    try:
        seed = _seed(args, share)
        inputs = collect_inputs(args.input)
        if args.mask:  # images and their masks in one folder (LaMa's layout): the masks are no inputs
            inputs = drop_masks(inputs, Path(args.mask))
        if not inputs:
            from .image_io import IMAGE_EXTENSIONS

            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {args.input}")
        restorer = _load_restorer(args, _device_for(share, args.device))
        _resolve_task(args, restorer)
        find_mask = mask_finder(Path(args.mask)) if args.mask else None
    except Exception as err:  # bad command line, missing model, checkpoint mismatch: one clear line
        print(f"error: {clean_message(err)}", file=sys.stderr)
        return 2
    print(share.tag + describe_run(args, restorer), file=sys.stderr)
    demo = _demo_entry(_model_name(args))
    if demo is not None and share.rank == 0:
        print(demo_advice(demo), file=sys.stderr)
    mine = share.take(inputs)
    if share.world_size > 1:
        print(f"{share.tag}{len(mine)} of the {len(inputs)} files", file=sys.stderr)

    import cv2
    from tqdm import tqdm

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # decoder noise; failures are reported below
    report = _Report()
    with tqdm(total=len(mine), unit="img", desc=f"{share.tag}restoring", position=0) as progress:
        written = 0
        for group in _same_size_groups(_read_jobs(inputs, mine, args, find_mask, report, progress), args.batch):
            written += _restore_group(restorer, group, seed, report)
            progress.update(len(group))

    # progress.total: this process's files, each animated / multi-page file counted by its frames
    print(f"{share.tag}restored {written} of {progress.total} images into {args.output}", file=sys.stderr)
    if report.skipped:
        print(f"{share.tag}skipped {len(report.skipped)} whose output already exists (--overwrite replaces them), "
              f"e.g. {report.skipped[0]}", file=sys.stderr)
    if restorer.fp32_fallbacks:
        print(f"{restorer.fp32_fallbacks} batch(es) gave NaN/inf in reduced precision and were re-run in fp32",
              file=sys.stderr)
    if report.failures:
        print(f"{share.tag}{len(report.failures)} failed:", file=sys.stderr)
        for path, reason in report.failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a DiffIR stage-two model to ONNX "
                                                 f"(needs the onnx extra: {ONNX_EXTRA}).")
    parser.add_argument("--version", action="version", version=f"%(prog)s (diffir {__version__})")
    parser.add_argument("-m", "--model", required=True, help="checkpoint file or zoo name")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--opt", help="option YAML with network_g, or a preset name (default: inferred)")
    parser.add_argument("--seed", type=int, help="bake this seed's initial noise in (default: noise is an input)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    parser.add_argument("--param-key", default="params_ema", help="checkpoint key of the weights")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the -o file if it exists (default: refuse, and write nothing)")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    """``diffir-export``: write a stage-two checkpoint as ONNX and check it against PyTorch."""
    args = build_export_parser().parse_args(argv)

    import torch

    from .export import check_onnx, export_onnx
    from .restorer import Restorer, initial_noise

    try:
        if Path(args.output).exists() and not args.overwrite:  # before the model loads
            raise FileExistsError(f"{args.output} exists; give --overwrite to replace it")
        net = Restorer.from_pretrained(args.model, options=args.opt, param_key=args.param_key, device="cpu").net
        export_onnx(net, args.output, seed=args.seed, opset=args.opset, overwrite=args.overwrite)
    except ImportError as err:
        print(f"error: {clean_message(err)}; ONNX export needs the onnx extra: {ONNX_EXTRA}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"error: {clean_message(err)}", file=sys.stderr)
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
        print(f"not checked: {err} (the check needs onnxruntime: {ONNX_EXTRA})", file=sys.stderr)
    return 0
