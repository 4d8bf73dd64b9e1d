"""Check a dataset's options and files before training or testing starts.

basicsr finds most data problems only when a worker first loads the bad file, often hours in and with
an assertion that does not name it. :func:`check_dataset_options` finds them up front and raises
:class:`DatasetError` saying which option, which path and which files:

* a missing ``dataroot_*`` / meta-info option, a path that does not exist, an empty folder;
* LQ and GT file names that do not pair up (``filename_tmpl`` and ``meta_info_file`` honoured as
  basicsr uses them), listing a few names missing on each side;
* LQ/GT sizes that do not match the scale, naming the pairs and their sizes;
* image files that cannot be read, by name.

Image sizes come from the file headers (PIL reads no pixel data), so a few thousand pairs take a
second or two. With ``decode=True`` (training: its training and validation sets) every image is also
decoded once with OpenCV, basicsr's reader, so a file whose header is fine but whose pixel data is
damaged stops the run before it starts rather than hours in. Images that decoded are remembered by
path, size and modification time (:class:`DecodeCache`), so a restart decodes only new or changed files.
"""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

import cv2
from basicsr.utils import scandir
from PIL import Image
from tqdm import tqdm

from ..utils.atomic import atomic_write_bytes

MAX_LISTED = 5  # names quoted in one error message
_HEADER_READERS = 8  # threads reading image headers (I/O bound)


class DatasetError(ValueError):
    """A dataset's options or files are unusable; the message says which and why."""


def check_dataset_options(dataset_opt: dict, scale: int | None = None, phase: str | None = None,
                          decode: bool = False) -> None:
    """Raise :class:`DatasetError` if the dataset described by ``dataset_opt`` cannot be used.

    ``phase`` is 'train', 'val' or 'test' (the prefix of its key in ``opt['datasets']``). Both default
    to the dataset's ``phase`` and ``scale`` (else 1), which :func:`diffir.options.parse_options` sets.
    ``decode``: decode every image too (see the module's doc). Dataset types this module does not
    know are accepted without checks.
    """
    checker = _CHECKERS.get(dataset_opt.get("type"))
    if checker is None:
        return
    scale = dataset_opt.get("scale", 1) if scale is None else scale
    check = _Check(dataset_opt, int(scale), dataset_opt["phase"] if phase is None else phase, decode)
    if (dataset_opt.get("io_backend") or {}).get("type") == "lmdb":
        check.lmdb_roots()
    else:
        checker(check)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" (and {len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else "")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header; OSError naming the reason when the file cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as pil_error:  # formats PIL does not know may still be readable by OpenCV (basicsr's reader)
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise OSError(f"{type(pil_error).__name__}: {pil_error}") from pil_error
        return img.shape[1], img.shape[0]


def read_meta_info(path: str | os.PathLike) -> list[str]:
    """The image names a meta-info file lists: the first word of each non-empty line."""
    with open(path) as fin:
        return [line.split()[0] for line in fin if line.strip()]


def _size_or_reason(path: str) -> tuple[int, int] | str:
    try:
        return image_size(path)
    except OSError as err:
        return str(err)


def _decodes(path: str) -> bool:
    return cv2.imread(path, cv2.IMREAD_UNCHANGED) is not None  # what basicsr's imfrombytes gets, from a file


class DecodeCache:
    """The images known to decode, by absolute path, as [size, mtime_ns]: a changed file is decoded again.

    Kept in ``$XDG_CACHE_HOME/diffir/decoded_images.json`` (``~/.cache`` by default); a missing or
    unreadable cache only means decoding again.
    """

    def __init__(self):
        root = os.environ.get("XDG_CACHE_HOME") or osp.join(osp.expanduser("~"), ".cache")
        self.path = osp.join(root, "diffir", "decoded_images.json")
        try:
            with open(self.path) as f:
                self.known = json.load(f)
        except (OSError, ValueError):
            self.known = {}

    @staticmethod
    def stamp(path: str) -> list[int]:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]

    def unchecked(self, paths: list[str]) -> list[str]:
        return [p for p in paths if self.known.get(osp.abspath(p)) != self.stamp(p)]

    def add(self, paths: list[str]) -> None:
        # entries of files that are gone are dropped, so the cache does not grow with every folder ever checked
        self.known = {p: stamp for p, stamp in self.known.items() if osp.exists(p)}
        self.known.update({osp.abspath(p): self.stamp(p) for p in paths})
        with contextlib.suppress(OSError):  # a read-only home: the next run decodes again
            atomic_write_bytes(self.path, json.dumps(self.known).encode())


def undecodable(paths: list[str]) -> list[str]:
    """The images of ``paths`` that OpenCV cannot decode; those that decode are cached."""
    cache = DecodeCache()
    todo = cache.unchecked(paths)
    with ThreadPoolExecutor(_HEADER_READERS) as pool:
        results = list(tqdm(pool.map(_decodes, todo), total=len(todo), desc="decoding images once",
                            unit="img", disable=len(todo) < 100, leave=False))
    if todo:
        cache.add([p for p, ok in zip(todo, results) if ok])
    return [p for p, ok in zip(todo, results) if not ok]


class _Check:
    """The checks for one dataset; every error names the dataset, the option and the path."""

    def __init__(self, opt: dict, scale: int, phase: str, decode: bool = False):
        self.opt = opt
        self.scale = scale
        self.phase = phase
        self.decode = decode
        self.label = f"dataset {opt.get('name', '?')!r} ({opt.get('type')}, {phase})"

    def fail(self, message: str) -> NoReturn:
        raise DatasetError(f"{self.label}: {message}")

    # ------------------------------------------------------------------ options and paths
    def folder(self, key: str) -> str:
        path = self.opt.get(key)
        if path is None:
            self.fail(f"missing option '{key}'")
        if not osp.isdir(path):
            self.fail(f"{key} '{path}' does not exist or is not a folder")
        return path

    def folder_names(self, key: str) -> list[str]:
        folder = self.folder(key)
        names = sorted(scandir(folder))  # what basicsr's folder mode reads: non-hidden files, not recursive
        if not names:
            self.fail(f"{key} '{folder}' is empty")
        return names

    def meta_names(self, key: str, required: bool = False) -> list[str] | None:
        path = self.opt.get(key)
        if path is None:
            if required:
                self.fail(f"missing option '{key}' (a text file listing the images)")
            return None
        if not osp.isfile(path):
            self.fail(f"{key} '{path}' does not exist")
        names = read_meta_info(path)
        if not names:
            self.fail(f"{key} '{path}' lists no images")
        return names

    def files_exist(self, paths: list[str], source: str) -> None:
        missing = [p for p in paths if not osp.isfile(p)]
        if missing:
            self.fail(f"{len(missing)} of the {len(paths)} images listed in {source} do not exist: {_listing(missing)}")

    def listed_paths(self, root_key: str, meta_key: str, required: bool = False) -> list[str]:
        """The images of folder ``root_key``: those its ``meta_key`` file lists (checked to exist), or
        without that option every file of the folder."""
        root = self.folder(root_key)
        names = self.meta_names(meta_key, required)
        if names is None:
            return [osp.join(root, name) for name in self.folder_names(root_key)]
        paths = [osp.join(root, name) for name in names]
        self.files_exist(paths, f"{meta_key} '{self.opt[meta_key]}'")
        return paths

    def lmdb_roots(self) -> None:
        roots = [key for key in ("dataroot_gt", "dataroot_lq") if key in self.opt]
        if not roots:
            self.fail("missing option 'dataroot_gt' / 'dataroot_lq'")
        for key in roots:
            self.folder(key)

    # ------------------------------------------------------------------ image headers
    def sizes(self, paths: list[str]) -> list[tuple[int, int]]:
        with ThreadPoolExecutor(_HEADER_READERS) as pool:
            sizes = list(pool.map(_size_or_reason, paths))
        unreadable = [f"{path} ({size})" for path, size in zip(paths, sizes) if isinstance(size, str)]
        if unreadable:
            self.fail(f"cannot read {len(unreadable)} image file(s): {_listing(unreadable)}")
        if self.decode:
            damaged = undecodable(paths)
            if damaged:
                self.fail(f"{len(damaged)} image file(s) have a readable header but cannot be decoded (truncated or "
                          f"damaged pixel data); replace or remove them: {_listing(damaged)}")
        return sizes

    def min_side(self, paths: list[str], size: int, what: str, sizes: list[tuple[int, int]] | None = None,
                 noun: str = "image") -> None:
        """Fail on images with a side below ``size``; ``sizes``: their (width, height) if already read."""
        sizes = self.sizes(paths) if sizes is None else sizes
        small = [f"{osp.basename(p)} ({w}x{h})" for p, (w, h) in zip(paths, sizes) if min(w, h) < size]
        if small:
            self.fail(f"{len(small)} {noun}(s) are smaller than {what} {size} on a side: {_listing(small)}")

    # ------------------------------------------------------------------ dataset kinds
    def paired(self) -> None:
        gt_root, lq_root = self.folder("dataroot_gt"), self.folder("dataroot_lq")
        template = self.opt.get("filename_tmpl", "{}")

        def lq_name(gt_name: str) -> str:
            stem, ext = osp.splitext(osp.basename(gt_name))
            return f"{template.format(stem)}{ext}"

        gt_names = self.meta_names("meta_info_file")
        if gt_names is not None:
            pairs = [(osp.join(gt_root, name), osp.join(lq_root, lq_name(name))) for name in gt_names]
            no_gt = [gt for gt, _ in pairs if not osp.isfile(gt)]
            no_lq = [lq for _, lq in pairs if not osp.isfile(lq)]
            if no_gt or no_lq:
                self.fail(f"images listed in meta_info_file '{self.opt['meta_info_file']}' are missing "
                          f"(LQ names from filename_tmpl '{template}'): {len(no_gt)} GT: {_listing(no_gt) or '-'}; "
                          f"{len(no_lq)} LQ: {_listing(no_lq) or '-'}")
        else:
            gt_names, lq_names = self.folder_names("dataroot_gt"), self.folder_names("dataroot_lq")
            expected_lq = {lq_name(name): name for name in gt_names}
            lq_present = set(lq_names)
            gt_without_lq = [gt for lq, gt in expected_lq.items() if lq not in lq_present]
            lq_without_gt = [lq for lq in lq_names if lq not in expected_lq]
            if gt_without_lq or lq_without_gt:
                self.fail(f"LQ and GT file names do not pair up (LQ name = filename_tmpl '{template}' of the GT "
                          f"name): {len(gt_without_lq)} GT image(s) without LQ in '{lq_root}': "
                          f"{_listing(gt_without_lq) or '-'}; {len(lq_without_gt)} LQ image(s) without GT in "
                          f"'{gt_root}': {_listing(lq_without_gt) or '-'}")
            pairs = [(osp.join(gt_root, gt), osp.join(lq_root, lq)) for lq, gt in expected_lq.items()]
        self.paired_sizes(pairs)

    def paired_sizes(self, pairs: list[tuple[str, str]]) -> None:
        sizes = self.sizes([p for pair in pairs for p in pair])
        s = self.scale
        # training crops need GT == LQ x scale exactly; evaluation crops GT down to LQ x scale, so a GT that
        # was not mod-cropped (up to scale - 1 pixels more) is fine there
        slack = 0 if self.phase == "train" else s - 1
        wrong = []
        for (gt_path, _), (gw, gh), (lw, lh) in zip(pairs, sizes[0::2], sizes[1::2]):
            if not (0 <= gw - lw * s <= slack and 0 <= gh - lh * s <= slack):
                wrong.append(f"{osp.basename(gt_path)}: GT {gw}x{gh}, LQ {lw}x{lh} "
                             f"(expected LQ {gw // s}x{gh // s})")
        if wrong:
            self.fail(f"LQ/GT sizes (width x height) do not match scale {s} for {len(wrong)} pair(s): "
                      f"{_listing(wrong)}")
        gt_size = self.opt.get("gt_size")
        if self.phase == "train" and gt_size:
            self.min_side([gt for gt, _ in pairs], gt_size, "gt_size", sizes[0::2], "GT image")

    def hr_bicubic(self) -> None:
        paths = self.listed_paths("dataroot_gt", "meta_info")
        if self.phase == "train":
            self.min_side(paths, int(self.opt.get("gt_size") or self.scale), "gt_size")
        else:
            self.min_side(paths, self.scale, "the scale")

    def realesrgan(self) -> None:
        paths = self.listed_paths("dataroot_gt", "meta_info", required=True)
        self.sizes(paths)  # any size works: the dataset pads or crops every image to 400 x 400

    def single(self) -> None:
        self.sizes(self.listed_paths("dataroot_lq", "meta_info_file"))


_CHECKERS = {
    "PairedImageDataset": _Check.paired,
    "HRBicubicDataset": _Check.hr_bicubic,
    "RealESRGANDataset": _Check.realesrgan,
    "SingleImageDataset": _Check.single,
}

__all__ = ["DatasetError", "check_dataset_options", "MAX_LISTED"]
