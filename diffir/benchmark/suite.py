"""Evaluate a model on benchmark sets: per-image and mean metrics, CSV and Markdown, comparison crops.

A :class:`BenchmarkSet` is a folder of LQ images with, optionally, a folder of ground truths paired
by name (``filename_tmpl`` as in basicsr: LQ stem = ``filename_tmpl.format(GT stem)``) and, for
inpainting, masks (``NAME_mask*.png`` next to the images as in LaMa's evaluation folders, or
``NAME.*`` / ``NAME_mask*.*`` in a mask folder). For inpainting the images are the ground truth:
the network sees them with the holes cut out. Sets without ground truth are restored and saved, and
only no-reference metrics (NIQE) are computed.

Outputs under ``out_dir``: ``<set>/<image>.png`` (restored), ``<set>/metrics.csv`` (per image, then
the mean), ``<set>/crops/<image>.png`` (LQ | output | GT) when asked, ``summary.csv`` and
``results.md`` (per set: the baseline, the model (named by its file or zoo name) and the paper where it
reports the set; a column per metric).

Every set with ground truth also gets a baseline row: the LQ input scored like an output. For SR that
is the input upscaled with MATLAB's bicubic (``bicubic``); for the same-size tasks the input itself
(``LQ input``: the blurry image, or for inpainting the image with black holes that the network is
given, ``masked input``). Scoring existing outputs without the set's LQ folder (``--restored`` with
``--gt`` only) gives no baseline, except for inpainting, where the images and masks are enough.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from basicsr.utils.matlab_functions import imresize

from ..image_io import (ImageReadError, is_mask_name, list_image_files, mask_lookup, read_image, read_mask, split_image,
                        write_image)
from ..metrics import (DEFAULT_METRICS, HIGHER_IS_BETTER, IMAGE_METRICS, NEEDS_GT, SET_METRICS, FIDMetric,
                      LPIPSMetric, MissingWeightsError, niqe, psnr, ssim, to_uint8_rgb)
from ..utils.atomic import atomic_write_bytes
from .paper import find_paper_set

_FORMAT = {"psnr": "{:.2f}", "ssim": "{:.4f}", "lpips": "{:.4f}", "niqe": "{:.3f}", "fid": "{:.4f}"}


@dataclass
class BenchmarkSet:
    name: str
    lq_dir: Path
    gt_dir: Path | None = None
    mask_dir: Path | None = None
    filename_tmpl: str = "{}"


@dataclass
class Sample:
    name: str
    lq: Path
    gt: Path | None
    mask: Path | None


@dataclass
class SetResult:
    name: str
    rows: list[dict] = field(default_factory=list)  # per image: {'image': name, metric: value}
    set_metrics: dict = field(default_factory=dict)  # metrics of the whole set (FID)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    notes: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # the paired samples, scored or failed
    baseline: str = ""  # what the baseline rows score ('bicubic', 'LQ input', 'masked input'); '' for none
    baseline_rows: list[dict] = field(default_factory=list)  # per image, as ``rows``

    @property
    def metric_names(self) -> list[str]:
        """The per-image metrics, in the rows' order."""
        return [k for k in (self.rows[0] if self.rows else {}) if k != "image"]

    def means(self) -> dict:
        return {k: _mean_of_defined([row[k] for row in self.rows]) for k in self.metric_names}

    def summary(self) -> dict:
        return {**self.means(), **self.set_metrics}

    def baseline_summary(self) -> dict:
        names = [k for k in (self.baseline_rows[0] if self.baseline_rows else {}) if k != "image"]
        return {k: _mean_of_defined([row[k] for row in self.baseline_rows]) for k in names}


def _mean_of_defined(values: list[float]) -> float:
    """Mean over the values that are not NaN (NIQE is undefined for images too small for its blocks)."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {folder}")
    return list_image_files(folder)


def list_samples(bset: BenchmarkSet, task: str) -> tuple[list[Sample], list[tuple[str, str]]]:
    """The samples of a set, and (file, reason) for files that could not be paired."""
    problems = []
    if task == "inpaint":
        mask_dir = bset.mask_dir or bset.lq_dir
        samples = []
        images = [p for p in _images(bset.lq_dir) if not is_mask_name(p)]
        find_mask = mask_lookup(_images(mask_dir)) if images else None  # no images: the mask folder is not read
        for image in images:
            mask = find_mask(image)
            if mask is None:
                problems.append((str(image), f"no mask {image.stem}_mask*.png in {mask_dir}"))
            else:
                samples.append(Sample(image.stem, image, image, mask))
        return samples, problems
    lq_files = {p.stem: p for p in _images(bset.lq_dir)}
    if bset.gt_dir is None:
        return [Sample(stem, path, None, None) for stem, path in lq_files.items()], problems
    samples = []
    for gt in _images(bset.gt_dir):
        lq = lq_files.get(bset.filename_tmpl.format(gt.stem))
        if lq is None:
            problems.append((str(gt), f"no LQ image named {bset.filename_tmpl.format(gt.stem)}.* in {bset.lq_dir}"))
        else:
            samples.append(Sample(gt.stem, lq, gt, None))
    return samples, problems


def _match_gt_size(gt: np.ndarray, output: np.ndarray, scale: int) -> np.ndarray:
    """Crop the GT to the output when it is larger by less than the scale (LR sizes were rounded down)."""
    (gh, gw), (oh, ow) = gt.shape[:2], output.shape[:2]
    if (gh, gw) == (oh, ow):
        return gt
    if 0 <= gh - oh < scale and 0 <= gw - ow < scale:
        return gt[:oh, :ow]
    raise ValueError(f"output is {oh}x{ow} but the ground truth is {gh}x{gw}")


def baseline_name(task: str, scale: int) -> str:
    if task == "inpaint":
        return "masked input"
    return "bicubic" if task == "sr" and scale > 1 else "LQ input"


def baseline_image(lq: np.ndarray, mask: np.ndarray | None, task: str, scale: int) -> np.ndarray:
    """What the network is given, as an image to score: the LQ (bicubic-upscaled for SR, holes black
    for inpainting, as in the network input), 8-bit RGB."""
    rgb = split_image(lq)[0]
    if task == "sr" and scale > 1:
        rgb = imresize(rgb, scale)
    elif mask is not None:
        rgb = rgb * ~mask[:, :, None]
    return to_uint8_rgb(np.clip(rgb, 0, 1))


def comparison_crop(lq: np.ndarray, output: np.ndarray, gt: np.ndarray | None, size: int) -> np.ndarray:
    """LQ (nearest-upscaled) | output | GT side by side, cropped where the output differs most from the GT."""
    height, width = output.shape[:2]
    lq_up = cv2.resize(lq, (width, height), interpolation=cv2.INTER_NEAREST)
    size = min(size, height, width)
    if gt is not None:
        error = cv2.boxFilter(np.abs(output.astype(np.float32) - gt.astype(np.float32)).mean(axis=2), -1, (size, size))
        cy, cx = np.unravel_index(np.argmax(error), error.shape)
    else:
        cy, cx = height // 2, width // 2
    top = int(np.clip(cy - size // 2, 0, height - size))
    left = int(np.clip(cx - size // 2, 0, width - size))
    panels = [im[top:top + size, left:left + size] for im in (lq_up, output, gt) if im is not None]
    gap = np.full((size, 4, 3), 255, np.uint8)
    return np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)


class Benchmark:
    """Scores restored images against ground truth with the protocol of the task.

    Args:
        task: the network task, 'sr', 'deblur' or 'inpaint'.
        scale: SR scale (the crop border for SR).
        metrics: names from psnr, ssim, lpips, niqe, fid; None: the task's defaults, leaving out
            LPIPS / FID when their weights are not on this machine (with a note).
        crop_border / y_channel: override the task's protocol (SR: scale / True; others: 0 / False).
        lpips_net, lpips_weights: LPIPS backbone ('alex' or 'vgg') and its local weights file.
        fid_weights: Inception weights for FID (see diffir.metrics.fid).
        crops: save LQ | output | GT comparison crops of ``crop_size`` output pixels.
    """

    def __init__(self, task: str, scale: int = 1, metrics: list[str] | None = None, crop_border: int | None = None,
                 y_channel: bool | None = None, lpips_net: str = "alex", lpips_weights: str | None = None,
                 fid_weights: str | None = None, device: str = "cpu", crops: bool = False, crop_size: int = 128):
        self.task, self.scale = task, scale
        self.crop_border = (scale if task == "sr" else 0) if crop_border is None else crop_border
        self.y_channel = (task == "sr") if y_channel is None else y_channel
        self.lpips_net, self.lpips_weights, self.fid_weights = lpips_net, lpips_weights, fid_weights
        self.device, self.crops, self.crop_size = device, crops, crop_size
        self.notes: list[str] = []
        explicit = metrics is not None
        metrics = list(DEFAULT_METRICS[task] if metrics is None else metrics)
        unknown = [m for m in metrics if m not in IMAGE_METRICS + SET_METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {IMAGE_METRICS + SET_METRICS}")
        loaded = {}  # the metrics that need weights
        for name, build in (("lpips", lambda: LPIPSMetric(lpips_net, lpips_weights, device)),
                            ("fid", lambda: FIDMetric(fid_weights, device))):
            if name not in metrics:
                continue
            try:
                loaded[name] = build()
            except MissingWeightsError as err:
                if explicit:
                    raise
                metrics.remove(name)
                self.notes.append(f"{name.upper()} not computed: {err}")
        self._lpips, self._fid = loaded.get("lpips"), loaded.get("fid")
        self.metrics = metrics

    def protocol(self) -> str:
        channel = "Y" if self.y_channel else "RGB"
        parts = [f"PSNR/SSIM on {channel}, crop_border {self.crop_border}"]
        if "lpips" in self.metrics:
            parts.append(f"LPIPS {self.lpips_net}")
        return "; ".join(parts)

    def image_metrics(self, output: np.ndarray, gt: np.ndarray | None) -> dict:
        """Per-image metrics of 8-bit RGB arrays (GT-based ones only when ``gt`` is given)."""
        values = {}
        for name in self.metrics:
            if name in SET_METRICS or (gt is None and name in NEEDS_GT):
                continue
            if name == "psnr":
                values[name] = psnr(output, gt, self.crop_border, self.y_channel)
            elif name == "ssim":
                values[name] = ssim(output, gt, self.crop_border, self.y_channel)
            elif name == "lpips":
                values[name] = self._lpips(output, gt)
            elif name == "niqe":
                values[name] = niqe(output, self.crop_border)
        return values

    def run_set(self, bset: BenchmarkSet, out_dir: str | os.PathLike, restorer=None, restored_dir=None,
                seed: int | None = 0) -> SetResult:
        """Restore (with ``restorer``) or read (from ``restored_dir``, named like the samples) and score a set."""
        if (restorer is None) == (restored_dir is None):
            raise ValueError("give either a restorer or a folder of restored images")
        set_dir = Path(out_dir) / bset.name
        result = SetResult(bset.name)
        result.samples, result.failures = list_samples(bset, self.task)
        samples = result.samples
        has_gt = bool(samples) and samples[0].gt is not None
        if samples and not has_gt:
            result.notes.append("no ground truth: outputs only" + (", NIQE" if "niqe" in self.metrics else ""))
        fid = self._fid if has_gt else None
        if fid is not None:
            fid.reset()
        restored = {p.stem: p for p in _images(Path(restored_dir))} if restored_dir is not None else None
        # scoring outputs without their LQ folder (the set's LQ is its GT) leaves nothing to compare with
        if has_gt and (self.task == "inpaint" or bset.lq_dir != bset.gt_dir):
            result.baseline = baseline_name(self.task, self.scale)
        for sample in samples:
            try:
                lq = read_image(sample.lq)
                mask = read_mask(sample.mask) if sample.mask else None
                if restorer is not None:
                    output = restorer.restore(lq, mask, seed)
                    write_image(set_dir / f"{sample.name}.png", output)
                else:
                    if sample.name not in restored:
                        raise FileNotFoundError(f"no restored image {sample.name}.* in {restored_dir}")
                    output = read_image(restored[sample.name])
                output8 = to_uint8_rgb(output)
                gt8 = _match_gt_size(to_uint8_rgb(read_image(sample.gt)), output8, self.scale) if sample.gt else None
                row = {"image": sample.name, **self.image_metrics(output8, gt8)}
                if result.baseline:
                    base8 = baseline_image(lq, mask, self.task, self.scale)
                    result.baseline_rows.append({"image": sample.name, **self.image_metrics(base8, gt8)})
                result.rows.append(row)
                if fid is not None:
                    fid.update(output8, gt8)
                if self.crops:
                    lq8 = to_uint8_rgb(lq)
                    if mask is not None:
                        lq8 = np.where(mask[:, :, None], 255, lq8).astype(np.uint8)
                    write_image(set_dir / "crops" / f"{sample.name}.png",
                                comparison_crop(lq8, output8, gt8, self.crop_size))
            except (ImageReadError, OSError, ValueError, RuntimeError) as err:
                result.failures.append((str(sample.lq), str(err)))
        if any(math.isnan(row.get("niqe", 0.0)) for row in result.rows):
            result.notes.append("NIQE is undefined (nan) for images with fewer than two 96x96 blocks")
        if fid is not None:
            if len(result.rows) >= 2:
                result.set_metrics["fid"] = fid.compute()
                if result.baseline:
                    result.notes.append(f"FID is computed for the model only, not for the {result.baseline}")
            else:
                result.notes.append("FID needs at least 2 images")
        write_csv(set_dir / "metrics.csv", result)
        return result


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_csv(path: Path, result: SetResult) -> None:
    """Per-image metrics of a set, then a ``mean`` row (atomic write)."""
    names = result.metric_names
    rows = [[row["image"], *(f"{row[k]:.6f}" for k in names)] for row in result.rows]
    if result.rows and names:
        rows.append(["mean", *(f"{v:.6f}" for v in result.means().values())])
    atomic_write_bytes(path, _csv_bytes(["image", *names], rows))


def write_summary(out_dir: str | os.PathLike, results: list[SetResult], benchmark: Benchmark, title: str,
                  stochasticity: list[dict] | None = None, method: str = "model") -> Path:
    """``summary.csv`` (set, images, method, metric, value) and ``results.md`` (per set: the baseline,
    ``method``, i.e. the model or outputs scored, and the paper); returns the Markdown path."""
    out_dir = Path(out_dir)
    summaries = [result.summary() for result in results]
    metrics = [m for m in IMAGE_METRICS + SET_METRICS if any(m in summary for summary in summaries)]
    table, csv_rows = [], []

    def add(result: SetResult, label: str, values: dict, images: int | str):
        csv_rows.extend([result.name, images, label, m, f"{values[m]:.6f}"] for m in metrics if m in values)
        cells = [_FORMAT[m].format(values[m]) if m in values else "" for m in metrics]
        table.append(_md_row([result.name, images, label, *cells]))

    for result, summary in zip(results, summaries):
        if result.baseline:
            add(result, f"{result.baseline} (baseline)", result.baseline_summary(), len(result.baseline_rows))
        add(result, method, summary, len(result.rows))
        paper_set = find_paper_set(result.name, benchmark.task)
        paper = {m: v for m, v in paper_set.results.items() if m in metrics} if paper_set else {}
        if paper:
            note = f", {paper_set.note}" if paper_set.note else ""
            add(result, f"DiffIR paper ({paper_set.table}{note})", paper, "")
    atomic_write_bytes(out_dir / "summary.csv", _csv_bytes(["set", "images", "method", "metric", "value"], csv_rows))

    header = ["set", "images", "method", *(f"{m.upper()} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics)]
    lines = [f"# {title}", "", f"Protocol: {benchmark.protocol()}.", "",
             _md_row(header), _md_row(["---"] * len(header)), *table, ""]
    notes = list(benchmark.notes)
    for result in results:
        notes += [f"{result.name}: {note}" for note in result.notes]
        notes += [f"{result.name}: FAILED {name}: {reason}" for name, reason in result.failures]
    if notes:
        lines += ["Notes:", "", *(f"- {note}" for note in notes), ""]
    if stochasticity:
        lines += ["## Stochasticity (same image, different seeds)", "",
                  "| set | image | seeds | mean pixel std (8-bit) | max pixel std | PSNR vs | PSNR min | "
                  "PSNR max | spread (dB) |", "|---|---|---|---|---|---|---|---|---|"]
        for row in stochasticity:
            lines.append(f"| {row['set']} | {row['image']} | {row['seeds']} | {row['pixel_std_mean']:.4f} | "
                         f"{row['pixel_std_max']:.4f} | {row['reference']} | {_db(row['psnr_min'])} | "
                         f"{_db(row['psnr_max'])} | {row['psnr_spread']:.4f} |")
        lines.append("")
    path = out_dir / "results.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def _md_row(cells: list) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def stochasticity(restorer, image: np.ndarray, seeds: list[int], mask: np.ndarray | None = None,
                  gt: np.ndarray | None = None, benchmark: Benchmark | None = None) -> dict:
    """Restore one image with each seed: per-pixel standard deviation and the spread of PSNR.

    Outputs are kept in float (no 8-bit rounding, which would hide small differences); PSNR is taken
    against the ground truth when given, else against the mean output, with the benchmark's protocol.
    """
    rgb = split_image(image)[0]
    outputs = np.stack([restorer.restore(rgb, mask, seed) for seed in seeds]).astype(np.float64) * 255
    std = outputs.std(axis=0)
    crop_border = benchmark.crop_border if benchmark else 0
    y_channel = benchmark.y_channel if benchmark else False
    if gt is not None:
        reference = _match_gt_size(split_image(gt)[0].astype(np.float64) * 255, outputs[0], restorer.scale)
        label = "GT"
    else:
        reference, label = outputs.mean(axis=0), "mean output"
    values = [psnr(out, reference, crop_border, y_channel) for out in outputs]
    finite = [v for v in values if math.isfinite(v)]
    spread = max(finite) - min(finite) if len(finite) == len(values) else (0.0 if not finite else math.inf)
    return {"seeds": len(seeds), "pixel_std_mean": float(std.mean()), "pixel_std_max": float(std.max()),
            "reference": label, "psnr_min": min(values), "psnr_max": max(values), "psnr_spread": spread}
