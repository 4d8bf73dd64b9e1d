"""Inpainting masks as LaMa and DiffIR make them: irregular brush strokes and boxes, seeded.

A mask is a float32 (H, W) array, 1 = hole (pixels to fill), 0 = known. Files are 8-bit PNGs,
white = hole; any non-zero pixel reads as a hole (LaMa's ``mask > 0``).

:class:`MaskGenerator` takes LaMa's own option names, so a LaMa / DiffIR ``mask_gen_kwargs`` block
works unchanged, and draws from the same distribution as LaMa's ``MixedMaskGenerator``:

* one kind per mask, chosen with probability proportional to ``irregular_proba`` / ``box_proba``;
* irregular: strokes of 1-5 connected segments, each segment of length 10 .. 9 + max_len, brush
  width 5 .. 4 + max_width and direction angle 0.01 + {0 .. max_angle - 1} radians (mirrored to
  2*pi - angle for every other stroke). LaMa draws ``min_times`` .. ``max_times + 1`` strokes (the
  "+ 1" comes from its curriculum ramp code and is there whenever no ramp is configured); we keep it;
* box: ``min_times`` .. ``max_times`` rectangles with sides ``bbox_min_size`` .. ``bbox_max_size``
  (capped to the image minus twice ``margin``), placed at least ``margin`` pixels from the border.

The random streams differ from LaMa's (numpy ``Generator`` here, the legacy global state there), so
the same seed does not give LaMa's pixels; for numbers comparable with published tables use the
mask files shipped with the benchmark when you have them, and :func:`generate_mask_set` otherwise.

Presets (:data:`MASK_PRESETS`): ``train`` is the official DiffIR training generator (CelebA-HQ and
Places2 configs); ``thin_256`` ... ``thick_512`` are LaMa's ``random_{thin,medium,thick}_{256,512}``
evaluation configs, which also reject masks covering more than half the image (LaMa's
``max_tamper_area: 0.5``). Hole-fraction statistics of 2000 masks per preset at the preset's size
(mean, 5th-95th percentile; measured with :func:`coverage_stats`, seed 0):

==========  ======  ==============  ======
preset      mean    5% - 95%        max
==========  ======  ==============  ======
train       0.346   0.076 - 0.722   0.974
thin_256    0.289   0.071 - 0.473   0.500
medium_256  0.235   0.017 - 0.424   0.499
thick_256   0.266   0.060 - 0.475   0.500
thin_512    0.290   0.062 - 0.474   0.500
medium_512  0.276   0.040 - 0.476   0.500
thick_512   0.262   0.053 - 0.473   0.500
==========  ======  ==============  ======

"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..image_io import IMAGE_EXTENSIONS, list_image_files, write_image
from .checks import image_size


@dataclass(frozen=True)
class IrregularMaskOptions:
    """LaMa's ``irregular_kwargs`` (same names, same meaning)."""

    max_angle: int = 4
    max_len: int = 60
    max_width: int = 20
    min_times: int = 0
    max_times: int = 10


@dataclass(frozen=True)
class BoxMaskOptions:
    """LaMa's ``box_kwargs`` (same names, same meaning)."""

    margin: int = 10
    bbox_min_size: int = 30
    bbox_max_size: int = 100
    min_times: int = 0
    max_times: int = 3


def draw_irregular_mask(height: int, width: int, rng: np.random.Generator,
                        options: IrregularMaskOptions = IrregularMaskOptions()) -> np.ndarray:
    """Brush strokes: each stroke is a polyline of thick segments from a random start point."""
    mask = np.zeros((height, width), np.float32)
    n_strokes = rng.integers(options.min_times, options.max_times + 2)  # LaMa's effective upper bound
    for stroke in range(n_strokes):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        for _ in range(1 + rng.integers(5)):
            angle = 0.01 + rng.integers(options.max_angle)
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = 10 + rng.integers(options.max_len)
            brush = int(5 + rng.integers(options.max_width))
            # truncation toward zero, then clipping to [0, size] (not size - 1), as LaMa does
            end_x = int(np.clip(int(x + length * math.sin(angle)), 0, width))
            end_y = int(np.clip(int(y + length * math.cos(angle)), 0, height))
            cv2.line(mask, (x, y), (end_x, end_y), 1.0, brush)
            x, y = end_x, end_y
    return mask


def draw_box_mask(height: int, width: int, rng: np.random.Generator,
                  options: BoxMaskOptions = BoxMaskOptions()) -> np.ndarray:
    """Axis-aligned filled rectangles inside the image, ``margin`` pixels from its border."""
    margin = options.margin
    max_side = min(options.bbox_max_size + 1, height - 2 * margin, width - 2 * margin)
    if max_side <= options.bbox_min_size:
        raise ValueError(f"a {height}x{width} image with margin {margin} has no room for boxes of at least "
                         f"{options.bbox_min_size} pixels; lower bbox_min_size or margin")
    mask = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(options.min_times, options.max_times + 1)):
        box_w = int(rng.integers(options.bbox_min_size, max_side))
        box_h = int(rng.integers(options.bbox_min_size, max_side))
        left = int(rng.integers(margin, width - margin - box_w + 1))
        top = int(rng.integers(margin, height - margin - box_h + 1))
        mask[top:top + box_h, left:left + box_w] = 1
    return mask


class MaskGenerator:
    """Random inpainting masks from LaMa-style options; call it with (height, width, rng).

    Args:
        irregular_proba, box_proba: relative chance of a stroke or a box mask (need not sum to 1).
        irregular_kwargs, box_kwargs: LaMa's option dicts (see :class:`IrregularMaskOptions`,
            :class:`BoxMaskOptions`).
        min_hole_fraction, max_hole_fraction: masks whose hole fraction falls outside this range are
            redrawn (LaMa's evaluation sets use ``max_hole_fraction: 0.5``).
        max_tries: give up with an error after this many rejected draws.
    """

    def __init__(self, irregular_proba: float = 1.0, irregular_kwargs: dict | None = None, box_proba: float = 0.0,
                 box_kwargs: dict | None = None, min_hole_fraction: float = 0.0, max_hole_fraction: float = 1.0,
                 max_tries: int = 1000, **unsupported):
        # LaMa's other kinds (segmentation, squares, super-resolution, outpainting) are not implemented;
        # a config that gives them weight must fail rather than silently change the distribution
        used = {k: v for k, v in unsupported.items() if k.endswith("_proba") and v}
        ignored = {k for k in unsupported if not (k.endswith("_proba") or k.endswith("_kwargs") or k == "variants_n")}
        if used or ignored:
            raise ValueError(f"unsupported mask generator options {sorted(used) + sorted(ignored)}; supported: "
                             f"irregular_proba/irregular_kwargs, box_proba/box_kwargs, min/max_hole_fraction")
        if irregular_proba < 0 or box_proba < 0 or irregular_proba + box_proba <= 0:
            raise ValueError(f"irregular_proba and box_proba must be >= 0 and not both 0, got "
                             f"{irregular_proba} and {box_proba}")
        if not 0 <= min_hole_fraction <= max_hole_fraction <= 1:
            raise ValueError(f"need 0 <= min_hole_fraction <= max_hole_fraction <= 1, got "
                             f"{min_hole_fraction} and {max_hole_fraction}")
        self.kinds = []
        if irregular_proba > 0:
            self.kinds.append((irregular_proba, draw_irregular_mask, IrregularMaskOptions(**(irregular_kwargs or {}))))
        if box_proba > 0:
            self.kinds.append((box_proba, draw_box_mask, BoxMaskOptions(**(box_kwargs or {}))))
        weights = np.array([k[0] for k in self.kinds], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.min_hole_fraction = min_hole_fraction
        self.max_hole_fraction = max_hole_fraction
        self.max_tries = max_tries

    def draw(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """One mask, without the hole-fraction check."""
        index = rng.choice(len(self.kinds), p=self.probabilities) if len(self.kinds) > 1 else 0
        _, draw, options = self.kinds[index]
        return draw(height, width, rng, options)

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        for _ in range(self.max_tries):
            mask = self.draw(height, width, rng)
            if self.min_hole_fraction <= mask.mean() <= self.max_hole_fraction:
                return mask
        raise RuntimeError(f"no mask with hole fraction in [{self.min_hole_fraction}, {self.max_hole_fraction}] in "
                           f"{self.max_tries} draws at {height}x{width}; widen the range or change the options")

    @classmethod
    def from_options(cls, options: str | dict) -> MaskGenerator:
        """Build from a preset name, or a dict of constructor options (optionally ``preset: name`` plus overrides)."""
        if isinstance(options, str):
            options = {"preset": options}
        options = dict(options)
        preset = options.pop("preset", None)
        if preset is not None:
            if preset not in MASK_PRESETS:
                raise ValueError(f"unknown mask preset {preset!r}; choose one of {sorted(MASK_PRESETS)}")
            options = {**MASK_PRESETS[preset], **options}
        return cls(**options)


_THICK_BOXES = dict(box_proba=0.3, max_hole_fraction=0.5)
MASK_PRESETS: dict[str, dict] = {
    # DiffIR training (configs/training/data/abl-04-256-mh-dist*.yaml)
    "train": dict(irregular_proba=1, irregular_kwargs=dict(max_angle=4, max_len=200, max_width=100, min_times=1,
                                                           max_times=5),
                  box_proba=1, box_kwargs=dict(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1,
                                               max_times=4)),
    # LaMa evaluation sets (configs/data_gen/random_*.yaml)
    "thin_256": dict(irregular_kwargs=dict(max_angle=4, max_len=40, max_width=10, min_times=4, max_times=50),
                     max_hole_fraction=0.5),
    "medium_256": dict(irregular_kwargs=dict(max_angle=4, max_len=100, max_width=50, min_times=4, max_times=5),
                       box_kwargs=dict(margin=0, bbox_min_size=10, bbox_max_size=50, min_times=1, max_times=5),
                       **_THICK_BOXES),
    "thick_256": dict(irregular_kwargs=dict(max_angle=4, max_len=200, max_width=100, min_times=1, max_times=5),
                      box_kwargs=dict(margin=10, bbox_min_size=30, bbox_max_size=150, min_times=1, max_times=3),
                      **_THICK_BOXES),
    "thin_512": dict(irregular_kwargs=dict(max_angle=4, max_len=100, max_width=20, min_times=4, max_times=70),
                     max_hole_fraction=0.5),
    "medium_512": dict(irregular_kwargs=dict(max_angle=4, max_len=200, max_width=100, min_times=4, max_times=10),
                       box_kwargs=dict(margin=0, bbox_min_size=30, bbox_max_size=150, min_times=1, max_times=5),
                       **_THICK_BOXES),
    "thick_512": dict(irregular_kwargs=dict(max_angle=4, max_len=450, max_width=250, min_times=1, max_times=5),
                      box_kwargs=dict(margin=10, bbox_min_size=30, bbox_max_size=300, min_times=1, max_times=4),
                      **_THICK_BOXES),
}


def seeded_rng(seed: int, key: str | int) -> np.random.Generator:
    """A generator that depends only on (seed, key): the mask of one image never depends on the others."""
    key_int = key if isinstance(key, int) else zlib.crc32(str(key).encode("utf-8"))
    return np.random.default_rng([int(seed), int(key_int)])


def coverage_stats(generator: MaskGenerator, size: int, n: int, seed: int = 0) -> dict[str, float]:
    """Mean and 5th / 95th percentiles, min and max of the hole fraction of ``n`` masks."""
    rng = np.random.default_rng(seed)
    fractions = np.array([generator(size, size, rng).mean() for _ in range(n)])
    return {"mean": float(fractions.mean()), "p05": float(np.percentile(fractions, 5)),
            "p95": float(np.percentile(fractions, 95)), "min": float(fractions.min()), "max": float(fractions.max())}


# ---------------------------------------------------------------------------------------- files
def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as float32 (H, W) in {0, 1}; any non-zero pixel is a hole.

    Read as grey, as LaMa reads masks: an alpha channel must not turn every pixel into a hole."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"cannot read mask image {path}")
    return (mask > 0).astype(np.float32)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a {0, 1} mask as an 8-bit PNG (white = hole), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"masks are written as PNG (lossless); got {path}")
    write_image(path, (np.asarray(mask) > 0).astype(np.uint8) * 255)


def list_images(folder: str | os.PathLike, exclude_suffix: str = "") -> list[Path]:
    """Image files directly in ``folder``, sorted by name; names ending with ``exclude_suffix`` are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = list_image_files(folder)
    if exclude_suffix:
        files = [p for p in files if not p.stem.endswith(exclude_suffix)]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def generate_mask_set(image_dir: str | os.PathLike, mask_dir: str | os.PathLike, generator: MaskGenerator,
                      seed: int = 0, overwrite: bool = False) -> dict[str, float]:
    """Write one mask per image of ``image_dir`` to ``mask_dir/<image stem>.png``, at the image's size.

    Each mask depends only on (seed, image stem), so the set is reproducible and adding images does
    not change the masks of the others. Returns {stem: hole fraction}.
    """
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    coverage = {}
    for image_path in list_images(image_dir):
        out = mask_dir / f"{image_path.stem}.png"
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace the mask set")
        width, height = image_size(image_path)  # header only: no need to decode the image
        mask = generator(height, width, seeded_rng(seed, image_path.stem))
        write_mask(out, mask)
        coverage[image_path.stem] = float(mask.mean())
    return coverage
