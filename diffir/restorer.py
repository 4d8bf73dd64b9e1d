"""Restorer: restore image arrays with a stage-two DiffIR model (the API behind inference.py).

    from diffir import Restorer
    restorer = Restorer.from_pretrained("demo-sr-x4")             # zoo name or checkpoint path
    sr = restorer.restore(image, seed=0)                          # uint8/uint16/float, gray/RGB/RGBA

What it takes care of:

* **Any size.** The input is reflect-padded to the network's size multiple and the output cropped
  back, so odd and tiny images come back at exactly ``scale`` times their size.
* **Large images, bounded memory** (``tile=``). The IPR is one global 256-d vector per image: it is
  computed once, from the whole image, and shared by every tile, so tiles cannot disagree in style.
  CPEN_S2 ends in global average pooling, so its convolutions are run tile by tile with a halo as wide
  as their receptive field and their pooled sums are added up: the same condition vector as the
  untiled run (up to float summation order), with memory bounded by the tile. The DIRformer then runs
  per tile, and overlapping tiles are blended with linear ramps. DIRformer's transposed attention
  pools over all pixels of its input (C x C maps), so a tile is not exactly the corresponding part
  of the untiled output; the larger the tile, the smaller the difference (measured in
  tests/test_inference.py and benchmarks/inference_speed.py).
* **Reproducible sampling.** ``seed`` fixes the initial noise of the IPR diffusion, drawn on the CPU
  so that a seed gives the same noise on every device; one seed gives every image of a batch the
  noise it would get alone.
* **Reduced precision.** ``precision='fp16'`` / ``'bf16'`` runs under autocast; an image whose result
  has NaN or inf is run again in fp32 with the rest of its batch (``fp32_fallbacks`` counts batches).
* **Fidelity <-> perception.** ``from_pretrained(a, model2=b, blend=alpha)`` interpolates the
  weights of two checkpoints of one architecture (e.g. the L1- and the GAN-trained stage two).
"""
from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .archs.diffir_arch import DiffIRS2
from .archs.ipr_diffusion import IPR_DIM
from .checkpoint import blend_state_dicts, network_for_state_dict, read_state_dict
from .image_io import hole_mask, merge_image, split_image
from .inpainting import composite, prepare_inpainting_input
from .utils.compile import compile_network
from .utils.padding import crop_to, pad_to_multiple
from .zoo import find_model, network_options

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


# inference.py's --task names and the network task each one runs
NETWORK_TASK = {"sr": "sr", "realsr": "sr", "deblur": "deblur", "inpaint": "inpaint"}


def default_scale(task: str) -> int:
    """The scale a --task implies when none is given: x4 for super-resolution, else 1."""
    return 4 if NETWORK_TASK[task] == "sr" else 1


def check_task(restorer: "Restorer", task: str | None, scale: int | None) -> None:
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
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
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
                        **kwargs) -> "Restorer":
        """Load a checkpoint (file or zoo name) and build a Restorer; ``kwargs`` go to the constructor.

        ``options``: network options as a dict, an option YAML with ``network_g``, or a preset name;
        by default the zoo entry's configuration, else inferred from the weights. ``model2`` and
        ``blend``: interpolate the weights, ``(1 - blend) * model + blend * model2``.
        """
        path, entry = find_model(model)
        if options is None and entry is not None:
            options = entry.network
        elif options is not None and not isinstance(options, Mapping):
            options = network_options(options)
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
        """Restore same-sized images in one forward pass (``seed``: one for all, or one per image)."""
        split = [split_image(image) for image in images]
        sizes = {rgb.shape[:2] for rgb, _ in split}
        if len(sizes) != 1:
            raise ValueError(f"a batch needs images of one size, got sizes {sorted(sizes)}")
        lq = torch.from_numpy(np.stack([rgb for rgb, _ in split])).permute(0, 3, 1, 2)
        mask = None
        if masks is not None:
            if len(masks) != len(images):
                raise ValueError(f"got {len(masks)} masks for {len(images)} images")
            mask = torch.from_numpy(np.stack([mask_to_array(m, lq.shape[-2:]) for m in masks]))[:, None]
        out = self.restore_tensor(lq, mask, initial_noise(len(images), seed), progress)
        out = out.clamp_(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return [merge_image(rgb, layout) for rgb, (_, layout) in zip(out, split)]

    # ----------------------------------------------------------------------- tensors
    @torch.no_grad()
    def restore_tensor(self, lq: torch.Tensor, mask: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Restore a (B, 3, H, W) batch in [0, 1]; returns (B, 3, H*scale, W*scale), unclamped, float32.

        ``mask`` (B, 1, H, W), 1 = hole, is required for inpainting; ``noise`` (B, 256) is the
        diffusion's initial noise (default: a fresh draw). ``progress(done, total)`` is called after
        each DIRformer tile (once, ``(1, 1)``, without tiles).
        """
        lq = lq.to(self.device, torch.float32)
        if noise is None:
            noise = initial_noise(lq.shape[0], None)
        noise = noise.to(self.device, torch.float32)
        if self.task == "inpaint":
            if mask is None:
                raise ValueError("this is an inpainting model: give a mask (white / 1 = hole)")
            mask = mask.to(self.device, torch.float32)
            net_input = prepare_inpainting_input(lq, mask)
        else:
            if mask is not None:
                raise ValueError(f"a mask was given but the model does {self.task}, not inpainting")
            net_input = lq
        padded, size = pad_to_multiple(net_input, self.size_multiple)
        out = crop_to(self._run(padded, noise, progress), size, self.scale)
        return composite(out, lq, mask) if self.task == "inpaint" else out

    def _run(self, x: torch.Tensor, noise: torch.Tensor, progress=None) -> torch.Tensor:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return self._forward(x, noise, progress)
        with torch.autocast(self.device.type, dtype=dtype):
            out = self._forward(x, noise, progress)  # _forward returns float32
        if torch.isfinite(out).all():
            return out
        self.fp32_fallbacks += 1
        warnings.warn(f"{self.precision} gave NaN/inf values; this image was restored again in fp32")
        return self._forward(x, noise, progress)

    def _needs_tiles(self, x: torch.Tensor) -> bool:
        return self.tile is not None and max(x.shape[-2:]) > self.tile

    def _forward(self, x: torch.Tensor, noise: torch.Tensor, progress=None) -> torch.Tensor:
        ipr = self.ipr(x, noise)
        if not self._needs_tiles(x):
            # a copy: with CUDA graphs (compile mode 'reduce-overhead') the next run reuses the output memory
            out = self.net.G(x, ipr).to(torch.float32, copy=True)
            if progress is not None:
                progress(1, 1)
            return out
        return self._tiled_dirformer(x, ipr, progress)

    # ----------------------------------------------------------------------- IPR
    @torch.no_grad()
    def ipr(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The IPR of a padded network input: CPEN_S2's condition, then the reverse diffusion."""
        cond = self.condition(x)
        return self.net.diffusion.reverse(noise.to(cond.dtype), cond)[-1]

    @torch.no_grad()
    def condition(self, x: torch.Tensor) -> torch.Tensor:
        """CPEN_S2's condition vector of the whole input; tiled (same value) when tiles are in use."""
        cpen = self.net.condition
        if not self._needs_tiles(x):
            return cpen(x)
        features, pool = cpen.E[:-1], cpen.E[-1]
        if not isinstance(pool, nn.AdaptiveAvgPool2d):
            raise TypeError("tiled CPEN needs CPEN.E to end with global average pooling")
        halo = sum(m.kernel_size[0] // 2 for m in features.modules() if isinstance(m, nn.Conv2d))
        x = F.pixel_unshuffle(x, cpen.lq_unshuffle) if cpen.lq_unshuffle > 1 else x
        height, width = x.shape[-2:]
        tile = max(1, self.tile // cpen.lq_unshuffle)
        total = None
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                top, left = max(0, y0 - halo), max(0, x0 - halo)
                region = x[..., top:min(height, y1 + halo), left:min(width, x1 + halo)]
                inner = features(region)[..., y0 - top:y1 - top, x0 - left:x1 - left]
                part = inner.float().sum(dim=(2, 3))
                total = part if total is None else total + part
        pooled = (total / (height * width)).to(x.dtype)
        return cpen.mlp(pooled)

    # ----------------------------------------------------------------------- tiles
    def _tiled_dirformer(self, x: torch.Tensor, ipr: torch.Tensor, progress=None) -> torch.Tensor:
        height, width = x.shape[-2:]
        s = self.scale
        tile_h, tile_w = min(self.tile, height), min(self.tile, width)
        ramp = self.tile_overlap * s
        # a tile's blending window is (row weights) x (column weights): one of each per tile row / column
        row_windows = [(y0, _ramp_window(tile_h * s, ramp, y0 > 0, y0 + tile_h < height).to(x.device)[:, None])
                       for y0 in tile_starts(height, tile_h, self.tile_overlap)]
        col_windows = [(x0, _ramp_window(tile_w * s, ramp, x0 > 0, x0 + tile_w < width).to(x.device)[None, :])
                       for x0 in tile_starts(width, tile_w, self.tile_overlap)]
        out = weight = None
        done, total = 0, len(row_windows) * len(col_windows)
        for y0, row_window in row_windows:
            for x0, col_window in col_windows:
                piece = self.net.G(x[..., y0:y0 + tile_h, x0:x0 + tile_w], ipr).float()
                if out is None:
                    out = piece.new_zeros(piece.shape[0], piece.shape[1], height * s, width * s)
                    weight = piece.new_zeros(1, 1, height * s, width * s)
                window = row_window * col_window
                rows, cols = slice(y0 * s, (y0 + tile_h) * s), slice(x0 * s, (x0 + tile_w) * s)
                out[..., rows, cols] += piece * window
                weight[..., rows, cols] += window
                done += 1
                if progress is not None:
                    progress(done, total)
        return out / weight
