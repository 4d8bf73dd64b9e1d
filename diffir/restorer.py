"""Restorer: restore image arrays with a stage-two DiffIR model (the API behind inference.py).

    from diffir import Restorer
    restorer = Restorer.from_pretrained("demo-sr-x4")             # zoo name or checkpoint path
    sr = restorer.restore(image, seed=0)                          # uint8/uint16/float, gray/RGB/RGBA

What it takes care of:

* **Any size.** The input is reflect-padded to the network's size multiple and the output cropped
  back, so odd and tiny images come back at exactly ``scale`` times their size.
* **Large images, bounded memory** (``tile=``). The IPR is one global 256-d vector per image: it is
  computed once, from the whole image, and shared by every tile, so tiles cannot disagree in style
  (``DiffIRS2.estimate_ipr(..., tile=)``: CPEN_S2's convolutions run tile by tile, the same vector up
  to float summation order). The DIRformer then runs per tile (``DiffIRS2.restore_with_ipr``), and
  overlapping tiles are blended with linear ramps tile by tile: finished output blocks go straight
  into the result array in its final dtype, so float memory holds a tile and the strip of rows it
  shares with the next row of tiles, not the image.
  DIRformer's transposed attention pools over all pixels of its input (C x C maps), so a tile is not
  exactly the corresponding part of the untiled output; the larger the tile, the smaller the
  difference (measured in tests/test_inference.py and benchmarks/inference_speed.py).
  ``progress(done, total)`` is called after each DIRformer tile (once with (1, 1) untiled).
* **Reproducible sampling.** ``seed`` fixes the initial noise of the IPR diffusion, drawn on the CPU
  so that a seed gives the same noise on every device; one seed gives every image of a batch the
  noise it would get alone.
* **Reduced precision.** ``precision='fp16'`` / ``'bf16'`` runs under autocast; an image whose result
  has NaN or inf is run again in fp32 with the rest of its batch (``fp32_fallbacks`` counts batches).
  Non-finite output in fp32 raises :class:`NonFiniteOutputError`, naming the cause (weights or image).
* **Fidelity <-> perception.** ``from_pretrained(a, model2=b, blend=alpha)`` interpolates the
  weights of two checkpoints of one architecture (e.g. the L1- and the GAN-trained stage two).
"""
from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .archs.cpen import IPR_DIM
from .archs.diffir_arch import DiffIRS2
from .archs.detect import network_for_state_dict
from .checkpoint import blend_state_dicts, read_state_dict
from .image_io import as_rgb, hole_mask, merge_image, split_channels, to_unit_range
from .inpainting import check_inpainting_pair, composite, prepare_inpainting_input
from .utils.compile import compile_network
from .utils.padding import pad_to_multiple, padding_to_multiple
from .utils.precision import autocast_context, precision_name
from .utils.safetensors_io import recorded_network_options
from .zoo import find_model, network_options

class NonFiniteOutputError(ValueError):
    """The restored image has NaN/inf values even in fp32; the message says whether the weights or the image."""


# inference.py's --task names and the network task each one runs
NETWORK_TASK = {"sr": "sr", "realsr": "sr", "deblur": "deblur", "inpaint": "inpaint"}


def default_scale(task: str) -> int:
    """The scale a --task implies when none is given: x4 for super-resolution, else 1."""
    return 4 if NETWORK_TASK[task] == "sr" else 1


def check_task(restorer: Restorer, task: str | None, scale: int | None) -> None:
    """Refuse a --task / --scale that the loaded model does not do."""
    if task and NETWORK_TASK[task] != restorer.task:
        raise ValueError(f"--task {task} but the model does {restorer.task}")
    if scale and scale != restorer.scale:
        raise ValueError(f"--scale {scale} but the model restores at x{restorer.scale}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; an explicit device must be available."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available (use --device cpu or auto)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {device!r} requested but Apple MPS is not available (use --device cpu or auto)")
    return resolved


def initial_noise(batch: int, seed: int | Sequence[int] | None) -> torch.Tensor:
    """The (B, 256) starting point of the IPR diffusion: seeded per image on the CPU, or fresh."""
    if seed is None:
        return torch.randn(batch, IPR_DIM)
    seeds = [seed] * batch if isinstance(seed, numbers.Integral) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
    return torch.cat([torch.randn(1, IPR_DIM, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def mask_to_array(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float32 (H, W) hole mask (1 = hole) from a bool, integer or float array (white = hole)."""
    holes = hole_mask(mask)
    if holes.shape != tuple(shape):
        raise ValueError(f"the mask is {holes.shape[0]}x{holes.shape[1]} but the image is {shape[0]}x{shape[1]}")
    return holes.astype(np.float32)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def _ramp_window(length: int, ramp: int, rise: bool, fall: bool) -> torch.Tensor:
    """1-D blending weights: linear ramps over ``ramp`` samples on the sides shared with a neighbour."""
    window = torch.ones(length)
    ramp = min(ramp, length)
    if ramp > 0:
        up = (torch.arange(ramp) + 0.5) / ramp
        if rise:
            window[:ramp] = torch.minimum(window[:ramp], up)
        if fall:
            window[-ramp:] = torch.minimum(window[-ramp:], up.flip(0))
    return window


def _padding_index(length: int, pad: int, mode: str) -> np.ndarray:
    """Source index of each of ``length + pad`` positions padded at the end: torch's 'reflect' (the
    edge not repeated) or 'replicate'."""
    beyond = np.arange(length, length + pad)
    return np.concatenate([np.arange(length), 2 * length - 2 - beyond if mode == "reflect" else
                           np.full(pad, length - 1)])


class _NetworkInput:
    """A batch's network input, padded to the size multiple, read region by region as float32 tensors.

    Made from image arrays, the pixels stay as they are, in each image's own dtype and channels: each
    region is padded and scaled to [0, 1] when read (bit for bit the values of
    :func:`~diffir.image_io.split_image` and :func:`~diffir.utils.pad_to_multiple`), so a tiled run
    holds no copy of the images. For inpainting a region reads ``cat(image * (1 - mask), mask)``.
    Indexed like a tensor, ``source[..., rows, cols]``, so that tiling code takes either.
    """

    def __init__(self, pixels: list[np.ndarray] | torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int],
                 device: torch.device, source_index: tuple[np.ndarray, np.ndarray] | None = None):
        # a padded (B, 3, H, W) tensor; or (h, w, 1 or 3) arrays, one per image, padded as they are read:
        # ``source_index`` holds the source row and column of each padded one
        self.pixels, self.source_index = pixels, source_index
        self.mask = mask  # (B, 1, H, W) float32 on the device (1 = hole), padded; None but for inpainting
        self.size = size  # (h, w) before padding
        self.device = device
        padded_size = pixels.shape[-2:] if source_index is None else tuple(len(index) for index in source_index)
        self.shape = (len(pixels), 3 if mask is None else 4, *padded_size)

    @classmethod
    def from_arrays(cls, channels: list[np.ndarray], mask: torch.Tensor | None, multiple: int,
                    device: torch.device) -> _NetworkInput:
        """From same-sized (H, W, 1 or 3) arrays (:func:`~diffir.image_io.split_channels`; each may have
        its own dtype) and a float (B, 1, H, W) mask."""
        size = channels[0].shape[:2]
        pad_h, pad_w, mode = padding_to_multiple(*size, multiple)
        if mask is not None:
            mask = pad_to_multiple(mask, multiple)[0].to(device, torch.float32)
        index = (_padding_index(size[0], pad_h, mode), _padding_index(size[1], pad_w, mode))
        return cls(list(channels), mask, size, device, index)

    @classmethod
    def from_tensors(cls, lq: torch.Tensor, mask: torch.Tensor | None, multiple: int,
                     device: torch.device) -> _NetworkInput:
        """From a (B, 3, H, W) batch in [0, 1] and a (B, 1, H, W) mask (bool, integer or float)."""
        if mask is not None:
            check_inpainting_pair(lq, mask)
            mask = pad_to_multiple(mask.to(device, torch.float32), multiple)[0]
        padded, size = pad_to_multiple(lq, multiple)
        return cls(padded, mask, size, device)

    def image(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """The (B, 3, h, w) float32 image of a region (without the mask), on the device."""
        if self.source_index is None:
            return self.pixels[..., rows, cols].to(self.device, torch.float32)
        source_rows, source_cols = self.source_index
        index = (source_rows[rows, None], source_cols[None, cols])
        region = np.stack([as_rgb(to_unit_range(pixels[index])) for pixels in self.pixels])
        return torch.from_numpy(region).permute(0, 3, 1, 2).to(self.device)

    def __getitem__(self, key: tuple) -> torch.Tensor:
        """The network input of ``source[..., rows, cols]`` (always the whole batch)."""
        batch, rows, cols = key
        if batch is not Ellipsis:
            raise IndexError(f"index the network input as [..., rows, cols], got {key}")
        lq = self.image(rows, cols)
        return lq if self.mask is None else prepare_inpainting_input(lq, self.mask[..., rows, cols])

    def whole(self) -> torch.Tensor:
        return self[..., :, :]

    def is_finite(self) -> bool:
        if self.source_index is None:
            return bool(torch.isfinite(self.pixels).all())
        return all(not np.issubdtype(pixels.dtype, np.floating) or np.isfinite(pixels).all() for pixels in self.pixels)


class Restorer:
    """Restores images with an eval-mode DiffIRS2.

    Args:
        net: the stage-two network (a DataParallel / DDP wrapper is unwrapped).
        device: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device.
        precision: 'fp32', 'fp16' or 'bf16' (autocast, with an fp32 re-run on non-finite output).
        tile: tile side in input pixels (rounded down to the size multiple); None: whole image.
        tile_overlap: input pixels shared by neighbouring tiles, blended with linear ramps.
        compile: ``torch.compile`` the DIRformer: True, a mode name (``'reduce-overhead'``: CUDA
            graphs) or a mapping of torch.compile arguments (see :mod:`diffir.utils.compile`). The
            first image of each new size pays the compilation.
    """

    def __init__(self, net: nn.Module, device: str | torch.device = "auto", precision: str = "fp32",
                 tile: int | None = None, tile_overlap: int = 32, compile: bool | str | Mapping | None = None):
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        if not isinstance(net, DiffIRS2):
            raise TypeError(f"Restorer needs a stage-two network (DiffIRS2), got {type(net).__name__}; "
                            "stage one (DiffIRS1) needs the ground truth and cannot restore on its own")
        precision = precision_name(precision)
        self.device = resolve_device(device)
        self.net = compile_network(net.eval().to(self.device), compile)
        self.precision = precision
        self.tile = None
        if tile is not None:
            self.tile = tile - tile % self.size_multiple
            if self.tile <= 0:
                raise ValueError(f"tile must be at least the size multiple {self.size_multiple}, got {tile}")
            if not 0 <= tile_overlap < self.tile:
                raise ValueError(f"tile_overlap must be in [0, tile) = [0, {self.tile}), got {tile_overlap}")
        self.tile_overlap = tile_overlap
        self.fp32_fallbacks = 0

    @classmethod
    def from_pretrained(cls, model: str | Path, options: Mapping | str | Path | None = None,
                        model2: str | Path | None = None, blend: float = 0.0, param_key: str = "params_ema",
                        **kwargs) -> Restorer:
        """Load a checkpoint (file or zoo name) and build a Restorer; ``kwargs`` go to the constructor.

        ``options``: network options as a dict, an option YAML with ``network_g``, or a preset name;
        by default the zoo entry's configuration, else those recorded in a diffir ``.safetensors``
        file, else inferred from the weights. ``model2`` and ``blend``: interpolate the weights,
        ``(1 - blend) * model + blend * model2``.
        """
        path, entry = find_model(model)
        if options is None and entry is not None:
            options = entry.network
        elif options is not None and not isinstance(options, Mapping):
            options = network_options(options)
        if options is None:
            options = recorded_network_options(path)
        state_dict, source = read_state_dict(path, param_key)
        origin = f"{path} ({source})"
        if model2 is not None:
            path2, _ = find_model(model2)
            state_dict = blend_state_dicts(state_dict, read_state_dict(path2, param_key)[0], blend)
            origin = f"blend of {path} and {path2} (alpha {blend})"
        elif blend:
            raise ValueError("blend needs a second model (model2) to interpolate towards")
        return cls(network_for_state_dict(state_dict, options, origin), **kwargs)

    @property
    def task(self) -> str:
        return self.net.task

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def size_multiple(self) -> int:
        return self.net.size_multiple

    # ----------------------------------------------------------------------- arrays
    def restore(self, image: np.ndarray, mask: np.ndarray | None = None, seed: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Restore one image array; the result has the input's dtype and layout (gray, RGB, RGBA)."""
        return self.restore_batch([image], None if mask is None else [mask], seed, progress)[0]

    def restore_batch(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None,
                      seed: int | Sequence[int] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
        """Restore same-sized images in one forward pass (``seed``: one for all, or one per image).

        Finished output blocks are written straight into the result arrays, in their final dtype: a
        tiled run holds only a tile and the sums it shares with its neighbours in float.
        """
        split = [split_channels(image) for image in images]
        sizes = {channels.shape[:2] for channels, _ in split}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs images of one size, got sizes {sorted(sizes)}")
        size = sizes.pop()
        self._check_mask_given(masks is not None)
        mask = None
        if masks is not None:
            if len(masks) != len(images):
                raise ValueError(f"got {len(masks)} masks for {len(images)} images")
            mask = torch.from_numpy(np.stack([mask_to_array(m, size) for m in masks]))[:, None]
        source = _NetworkInput.from_arrays([channels for channels, _ in split], mask, self.size_multiple,
                                           self.device)
        out_size = (size[0] * self.scale, size[1] * self.scale)
        layouts = [layout.at_size(out_size) for _, layout in split]
        outputs: list[np.ndarray | None] = [None] * len(images)

        def write(top: int, left: int, block: torch.Tensor) -> None:
            block = block.clamp_(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            area = (slice(top, top + block.shape[1]), slice(left, left + block.shape[2]))
            for i, (rgb, layout) in enumerate(zip(block, layouts)):
                alpha = None if layout.alpha is None else layout.alpha[area]
                merged = merge_image(rgb, replace(layout, alpha=alpha))
                if outputs[i] is None:
                    outputs[i] = np.empty(out_size + merged.shape[2:], merged.dtype)
                outputs[i][area] = merged

        self._restore_blocks(source, initial_noise(len(images), seed), write, progress)
        return outputs

    # ----------------------------------------------------------------------- tensors
    @torch.no_grad()
    def restore_tensor(self, lq: torch.Tensor, mask: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Restore a (B, 3, H, W) batch in [0, 1]; returns (B, 3, H*scale, W*scale), unclamped, float32.

        ``mask`` (B, 1, H, W), 1 = hole, is required for inpainting; ``noise`` (B, 256) is the
        diffusion's initial noise (default: a fresh draw).
        """
        out = None
        size = lq.shape[-2:]

        def write(top: int, left: int, block: torch.Tensor) -> None:
            nonlocal out
            if out is None:
                out = block.new_empty(*block.shape[:2], size[0] * self.scale, size[1] * self.scale)
            out[..., top:top + block.shape[-2], left:left + block.shape[-1]] = block

        self._check_mask_given(mask is not None)
        self._restore_blocks(_NetworkInput.from_tensors(lq, mask, self.size_multiple, self.device), noise, write,
                             progress)
        return out

    @torch.no_grad()
    def _restore_blocks(self, source: _NetworkInput, noise: torch.Tensor | None,
                        write: Callable[[int, int, torch.Tensor], None], progress: Callable[[int, int], None] | None):
        """Restore ``source`` and hand its output, cropped to the unpadded size, to
        ``write(top row, left column, float32 block)``, block by block.

        Reduced precision: a block with NaN/inf restarts the image in fp32 (its blocks are written again).
        Non-finite output in fp32 raises :class:`NonFiniteOutputError`.
        """
        if noise is None:
            noise = initial_noise(source.shape[0], None)
        noise = noise.to(self.device, torch.float32)
        (height, width), s = source.size, self.scale

        def write_cropped(top: int, left: int, block: torch.Tensor) -> None:
            block = block[..., :max(0, height * s - top), :max(0, width * s - left)]
            if block.numel() == 0:  # all padding
                return
            if self.task == "inpaint":
                area = (slice(top, top + block.shape[-2]), slice(left, left + block.shape[-1]))
                block = composite(block, source.image(*area), source.mask[(..., *area)])
            write(top, left, block)

        if self.precision != "fp32":
            if self._run_blocks(source, noise, write_cropped, progress, self.precision):
                return
            self.fp32_fallbacks += 1
            warnings.warn(f"{self.precision} gave NaN/inf values; this image was restored again in fp32", stacklevel=2)
        if not self._run_blocks(source, noise, write_cropped, progress, "fp32"):
            raise NonFiniteOutputError(self._non_finite_cause(source))

    def _check_mask_given(self, given: bool) -> None:
        if self.task == "inpaint" and not given:
            raise ValueError("this is an inpainting model: give a mask (white / 1 = hole)")
        if self.task != "inpaint" and given:
            raise ValueError(f"a mask was given but the model does {self.task}, not inpainting")

    def _non_finite_cause(self, source: _NetworkInput) -> str:
        if not source.is_finite():
            return "the input image has NaN/inf pixel values"
        for name, tensor in self.net.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                return (f"the restored image has NaN/inf values: the network's weights are not finite "
                        f"(first: {name}); the checkpoint is broken")
        return "the restored image has NaN/inf values in fp32 (the network overflowed on this image)"

    def _needs_tiles(self, x: torch.Tensor | _NetworkInput) -> bool:
        return self.tile is not None and max(x.shape[-2:]) > self.tile

    def _run_blocks(self, source: _NetworkInput, noise: torch.Tensor, write: Callable[[int, int, torch.Tensor], None],
                    progress: Callable[[int, int], None] | None, precision: str) -> bool:
        """One run over ``source`` in ``precision``: finished output blocks go to ``write``.
        False, at the first block with NaN/inf, which is not written."""
        def autocast():
            return autocast_context(self.device.type, precision)

        # tiles read the input region by region; a whole-image run reads it once
        tiled = self._needs_tiles(source)
        x = source if tiled else source.whole()
        with autocast():
            ipr = self.net.estimate_ipr(x, noise, self.tile if tiled else None)
        for top, left, block in self._blocks(x, ipr, autocast, progress or (lambda done, total: None)):
            if not torch.isfinite(block).all():
                return False
            write(top, left, block)
        return True

    # ----------------------------------------------------------------------- tiles
    def _blocks(self, x: torch.Tensor | _NetworkInput, ipr: torch.Tensor, autocast,
                progress: Callable[[int, int], None]):
        """Yield ``(top row, left column, float32 output block)`` of the padded input ``x``.

        Untiled: one block, the whole output. Tiled: overlapping tiles are blended with linear ramps,
        tile by tile in row order; each tile yields the part of its output that no later tile reaches.
        Only the sums still open are kept in float: the rows shared with the next tile row (a strip of
        ``tile_overlap * scale`` rows) and the columns shared with the next tile. Every output pixel
        gets the same sums, in the same order, as blending on one full-size canvas.
        """
        if not self._needs_tiles(x):
            with autocast():
                # a copy: with CUDA graphs (compile mode 'reduce-overhead') the next run reuses the output memory
                out = self.net.restore_with_ipr(x, ipr).to(torch.float32, copy=True)
            progress(1, 1)
            yield 0, 0, out
            return
        height, width = x.shape[-2:]
        s = self.scale
        tile_h, tile_w = min(self.tile, height), min(self.tile, width)
        ramp = self.tile_overlap * s
        row_starts = tile_starts(height, tile_h, self.tile_overlap)
        col_starts = tile_starts(width, tile_w, self.tile_overlap)
        # a tile's blending window is (row weights) x (column weights)
        col_windows = [_ramp_window(tile_w * s, ramp, x0 > 0, x0 + tile_w < width).to(self.device)[None, :]
                       for x0 in col_starts]
        total, done = len(row_starts) * len(col_starts), 0
        # per output pixel, the blend's running sum (channels 0..C-1) and total weight (channel C)
        channels = self.net.out_channels + 1
        shared_below = None  # the open sums of the rows the current tile row shares with the next one
        for i, y0 in enumerate(row_starts):
            row_window = _ramp_window(tile_h * s, ramp, y0 > 0, y0 + tile_h < height).to(self.device)[:, None]
            finished_rows = (row_starts[i + 1] - y0) * s if i + 1 < len(row_starts) else tile_h * s
            shared_above, shared_below = shared_below, torch.zeros(
                x.shape[0], channels, tile_h * s - finished_rows, width * s, device=self.device)
            shared_right = None  # the open sums of the columns this tile shares with the previous one
            for j, (x0, col_window) in enumerate(zip(col_starts, col_windows)):
                with autocast():
                    piece = self.net.restore_with_ipr(x[..., y0:y0 + tile_h, x0:x0 + tile_w], ipr).float()
                window = row_window * col_window
                sums = torch.zeros(x.shape[0], channels, tile_h * s, tile_w * s, device=self.device)
                opened = 0
                if shared_right is not None:
                    opened = shared_right.shape[-1]
                    sums[..., :opened] = shared_right
                if shared_above is not None:
                    sums[..., :shared_above.shape[-2], opened:] = shared_above[..., (x0 * s + opened):(x0 + tile_w) * s]
                sums[:, :-1] += piece * window
                sums[:, -1:] += window
                done += 1
                progress(done, total)
                finished_cols = (col_starts[j + 1] - x0) * s if j + 1 < len(col_starts) else tile_w * s
                shared_right = sums[..., finished_cols:]
                shared_below[..., x0 * s:x0 * s + finished_cols] = sums[..., finished_rows:, :finished_cols]
                block = sums[..., :finished_rows, :finished_cols]
                yield y0 * s, x0 * s, block[:, :-1] / block[:, -1:]
