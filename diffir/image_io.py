"""Reading and writing the images users have: 8/16-bit PNG, JPEG, grayscale, RGBA, odd file names.

Arrays are in RGB(A) channel order and keep their file's dtype (uint8 or uint16): ``(H, W)`` for
grayscale, ``(H, W, 3)`` for colour, ``(H, W, 4)`` with alpha. :func:`split_image` turns any of them
into what the network takes (float32 RGB in [0, 1]) plus what is needed to put the result back into
the same form (:func:`merge_image`): gray images are replicated to three channels and averaged back,
alpha is carried aside, and the bit depth is restored.

Files are decoded from bytes (``np.fromfile`` + ``cv2.imdecode``), so any path the OS accepts works,
and written atomically: encoded to a temporary file in the target folder (in memory first where
OpenCV cannot open the path), then moved over the target with ``os.replace``. A reader never sees a
half-written image.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from .utils.atomic import replacing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# formats that can hold several frames (multi-page TIFF, animated GIF / WebP): decoded frame by frame
MULTI_FRAME_EXTENSIONS = (".gif", ".tif", ".tiff", ".webp")
_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class ImageReadError(ValueError):
    """A file that is not a readable image (corrupt, empty, unsupported layout)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (not recursive), sorted; hidden files (a writer's temporary
    file, macOS ``._*`` metadata) are not images to restore."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Every frame of an image file as RGB(A) or grayscale arrays in the file's dtype (uint8 or uint16).

    One frame for most files; all pages of a multi-page TIFF, all frames of an animated GIF or WebP.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(path, f"cannot read the file ({err.strerror or err})") from err
    if data.size == 0:
        raise ImageReadError(path, "the file is empty")
    suffix = path.suffix.lower()
    if suffix in MULTI_FRAME_EXTENSIONS:
        ok, frames = cv2.imdecodemulti(data, cv2.IMREAD_UNCHANGED)
        frames = list(frames) if ok else []
    else:
        # IMREAD_UNCHANGED keeps alpha and 16 bits but ignores EXIF orientation; JPEGs have neither, so
        # they are decoded with the flags that rotate phone photos upright (and keep gray images gray)
        jpeg = suffix in (".jpg", ".jpeg")
        image = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if jpeg else cv2.IMREAD_UNCHANGED)
        frames = [] if image is None else [image]
    if not frames:
        raise ImageReadError(path, "not a decodable image (corrupt, truncated or an unsupported format)")
    return [_decoded_to_rgb(path, frame, opaque_alpha_dropped=suffix == ".gif") for frame in frames]


def _decoded_to_rgb(path: Path, image: np.ndarray, opaque_alpha_dropped: bool) -> np.ndarray:
    """OpenCV's BGR(A) decoding as RGB(A); GIF frames always decode with alpha, dropped when fully opaque."""
    if image.dtype not in _MAX_VALUE:
        raise ImageReadError(path, f"{image.dtype} pixels are not supported (8-bit and 16-bit images are)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if opaque_alpha_dropped and image.ndim == 3 and image.shape[2] == 4 and (image[:, :, 3] == 255).all():
        image = image[:, :, :3]
    if image.ndim == 3:
        code = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}.get(image.shape[2])
        if code is None:
            raise ImageReadError(path, f"{image.shape[2]}-channel images are not supported")
        image = cv2.cvtColor(image, code)
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode a single-frame image file to an RGB(A) or grayscale array in its own dtype (uint8 or uint16).

    A file with several frames (animated GIF, multi-page TIFF) is an error rather than silently its
    first frame: :func:`read_frames` reads them all.
    """
    frames = read_frames(path)
    if len(frames) > 1:
        raise ImageReadError(path, f"has {len(frames)} frames (animated or multi-page); each must be restored")
    return frames[0]


def to_8bit(image: np.ndarray) -> np.ndarray:
    """A uint16 image scaled to uint8 (65535 -> 255, rounded); uint8 images as they are."""
    return np.round(image / 257.0).astype(np.uint8) if image.dtype == np.uint16 else image


def write_image(path: str | os.PathLike, image: np.ndarray, jpeg_quality: int = 95, consume: bool = False) -> None:
    """Encode an RGB(A)/grayscale uint8 or uint16 array to ``path`` (format from the suffix), atomically.

    JPEG holds 8 bits and no alpha: 16-bit images are reduced to 8 bits, and an alpha channel is an
    error (write PNG instead) rather than being dropped silently. ``consume=True``: the array is not
    needed afterwards, so its channels are reordered in place for OpenCV instead of in a copy (a big
    image's writing then needs no memory beyond the array itself).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unknown image format {suffix!r}; use one of {', '.join(IMAGE_EXTENSIONS)}")
    if image.dtype not in _MAX_VALUE:
        raise ValueError(f"{path}: images are written from uint8 or uint16 arrays, got {image.dtype}")
    params = []
    if suffix not in (".png", ".tif", ".tiff"):
        converted = to_8bit(image)  # 8-bit formats: OpenCV would saturate 16-bit values instead
        consume, image = consume or converted is not image, converted
    if suffix in (".jpg", ".jpeg"):
        if image.ndim == 3 and image.shape[2] == 4:
            raise ValueError(f"{path}: JPEG has no alpha channel; write the RGBA image as PNG")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    if image.ndim == 3:
        image = _swap_red_blue(image) if consume else cv2.cvtColor(
            image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    with replacing(path, suffix) as tmp:
        # OpenCV opens the path with the C library, which mangles non-ASCII names on Windows
        if str(tmp).isascii() and cv2.imwrite(str(tmp), image, params):
            return
        ok, encoded = cv2.imencode(suffix, image, params)
        if not ok:
            raise ValueError(f"{path}: OpenCV could not encode a {image.shape} {image.dtype} image as {suffix}")
        encoded.tofile(tmp)


def _swap_red_blue(image: np.ndarray) -> np.ndarray:
    """RGB(A) <-> BGR(A) in place, a band of rows at a time (the temporary copy is one band)."""
    for top in range(0, image.shape[0], 256):
        band = image[top:top + 256]
        band[..., [0, 2]] = band[..., [2, 0]]
    return image


def hole_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean (H, W) holes of a mask array: white, above half the maximum, marks a hole.

    Integer masks are compared with half their dtype's maximum, bool and float masks with 0.5; colour
    masks by the mean of their RGB channels (alpha ignored). An integer mask of only 0s and 1s (some
    datasets store masks so) has its 1s as holes: by the first rule it would have none.
    """
    mask = np.asarray(mask)
    # the threshold comes from the input dtype: the channel mean of an integer mask is a float
    half = np.iinfo(mask.dtype).max / 2 if np.issubdtype(mask.dtype, np.integer) and mask.max(initial=0) > 1 else 0.5
    if mask.ndim == 3:
        mask = mask[..., :3].mean(axis=2)
    return mask > half


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """An inpainting mask as a boolean (H, W) array: True (white, above half the maximum) marks a hole."""
    return hole_mask(read_image(path))


def is_mask_name(path: str | os.PathLike) -> bool:
    """A file named as a mask of another image (``NAME_mask*.*``, LaMa's evaluation folders)."""
    return "_mask" in Path(path).stem


def mask_lookup(mask_files: list[Path]) -> Callable[[Path], Path | None]:
    """``find(image)``: the mask of an image among ``mask_files`` (image files of one folder, in name order).

    The rule: the first ``image.stem + "_mask*"`` in name order, else the first ``image.stem + ".*"``
    unless that folder is the image's own (an image is never its own mask), else None.
    """
    by_prefix, by_stem = {}, {}
    for path in mask_files:  # in name order, so setdefault keeps the first match
        by_stem.setdefault(path.stem, path)
        # "_mask" cannot overlap itself, so its matches are all the places a NAME + "_mask" prefix can end
        for match in re.finditer("_mask", path.stem):
            by_prefix.setdefault(path.stem[:match.start()], path)

    def find(image: Path) -> Path | None:
        if image.stem in by_prefix:
            return by_prefix[image.stem]
        same_name = by_stem.get(image.stem)
        return same_name if same_name is not None and same_name.parent != image.parent else None

    return find


@dataclass
class ImageLayout:
    """How an input array was laid out, so a restored RGB result can be put back in the same form."""

    gray: bool
    dtype: np.dtype
    alpha: np.ndarray | None  # float32 (H, W) in [0, 1], at the input size

    def at_size(self, size: tuple[int, int]) -> ImageLayout:
        """This layout with its alpha channel resized (bicubic) to ``size`` (h, w), e.g. a super-resolved output's."""
        if self.alpha is None or self.alpha.shape == tuple(size):
            return self
        return replace(self, alpha=cv2.resize(self.alpha, (size[1], size[0]), interpolation=cv2.INTER_CUBIC))


def split_channels(image: np.ndarray) -> tuple[np.ndarray, ImageLayout]:
    """The colour channels of an image array in its own dtype, (H, W, 1) gray or (H, W, 3) RGB (a view),
    and the input's layout. See :func:`split_image` for what is accepted."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        shape = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image array, got {shape}")
    if image.dtype not in _MAX_VALUE and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image arrays must be uint8, uint16 or float, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    alpha = None
    if image.shape[2] == 4:
        image, alpha = image[:, :, :3], to_unit_range(image[:, :, 3])
    return image, ImageLayout(gray=image.shape[2] == 1, dtype=image.dtype, alpha=alpha)


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """Float32 pixels in [0, 1]: uint8 and uint16 scaled by their maximum, float arrays as they are."""
    scaled = pixels.astype(np.float32)
    return scaled / _MAX_VALUE[pixels.dtype] if pixels.dtype in _MAX_VALUE else scaled


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) pixels from (..., 1) gray or (..., 3) colour ones (gray replicated)."""
    return np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def split_image(image: np.ndarray) -> tuple[np.ndarray, ImageLayout]:
    """Float32 RGB (H, W, 3) in [0, 1] for the network, and the input's layout.

    Accepts (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays in RGB(A) order; uint8 and uint16 are
    scaled by their maximum, float arrays are taken as already in [0, 1].
    """
    channels, layout = split_channels(image)
    return np.ascontiguousarray(as_rgb(to_unit_range(channels))), layout


def merge_image(rgb: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """Put a restored float RGB (h, w, 3) image back into the input's form (gray, alpha, dtype).

    A gray input comes back gray (the channel mean). The alpha channel is resized to the output with
    bicubic interpolation when the sizes differ (super-resolution) and re-attached.
    """
    out = rgb.mean(axis=2) if layout.gray else rgb
    if layout.alpha is not None:
        alpha = layout.at_size(out.shape[:2]).alpha
        out = np.concatenate([np.repeat(out[:, :, None], 3, axis=2) if out.ndim == 2 else out,
                              alpha[:, :, None]], axis=2)
    out = np.clip(out, 0.0, 1.0)
    if layout.dtype in _MAX_VALUE:
        return np.round(out * _MAX_VALUE[layout.dtype]).astype(layout.dtype)
    return out.astype(layout.dtype)
