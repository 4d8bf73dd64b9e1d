"""DiffIRS1 and DiffIRS2: the two stages of DiffIR, registered in basicsr's ARCH_REGISTRY.

The constructor arguments are the official ones, so the ``network_g`` / ``network_S1`` blocks of
the official option files build the right variant unchanged. The task is inferred from them unless
``task`` is given:

=========  ===============================  ==========================================
task       official option block            network
=========  ===============================  ==========================================
'sr'       has ``scale`` (4, 2 or 1)        x4 tail; x2 / x1 pixel-unshuffle the LR input
'deblur'   no ``scale``, ``inp_channels: 3``  same-resolution head + input residual
'inpaint'  ``inp_channels: 4``              image*(1-mask) + mask in, no residual/refinement
=========  ===============================  ==========================================

State-dict keys are the official ones (``G.*``, ``E.*``; ``G.*``, ``condition.*``, ``denoise.*``,
``diffusion.*``), including DiffIRS2's aliases ``diffusion.model.*`` == ``denoise.*`` and
``diffusion.condition.*`` == ``condition.*``. We keep the official names rather than remapping in a
load hook so that checkpoints move both ways (official scripts load ours) with plain
``load_state_dict(strict=True)`` and basicsr's ``load_network`` prints no key differences.

Two arguments beyond the official ones go to the DIRformer: ``impl`` ('auto', the default: 'fast' on
the CPU, the 'plain' reference elsewhere; same weights) and ``use_checkpoint`` (activation checkpointing of each block).

Calling conventions:

* ``DiffIRS1(lq, gt)``: eval -> restored image; train -> ``(restored, [ipr])``.
* ``DiffIRS2(lq)``: eval -> restored image, its initial noise drawn as the first random draw of the
  forward (``torch.randn((B, 256))`` on lq's device), or taken from ``noise=`` / ``generator=``. It is
  ``restore_with_ipr(lq, estimate_ipr(lq, noise))``: inference code (Restorer, its tiling, the ONNX
  export, the benchmark) calls these two public steps and nothing inside the network.
  ``DiffIRS2(lq, ipr_s1)`` in train mode -> ``(restored, [ipr after each reverse step])``;
  with ``ipr_only=True`` the DIRformer is skipped and ``(ipr, [iprs])`` is returned (the encoder
  phase of stage-two training, run through the wrapper so DDP sees the call).

Inputs must have height and width divisible by ``size_multiple`` (8 at the DIRformer's working
resolution: 8 for x4 SR, deblurring and inpainting, 16 for x2 SR, 32 for x1 SR); use
:func:`diffir.utils.pad_to_multiple` and crop the output back.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from basicsr.utils.registry import ARCH_REGISTRY

from ..utils.state_dict import mismatch_lines
from .cpen import CPEN, GT_UNSHUFFLE
from .dirformer import DIRformer
from .ipr_diffusion import IPRDenoiser, IPRDiffusion

TASKS = ("sr", "deblur", "inpaint")
_HEAD_OF_TASK = {"sr": "sr", "deblur": "restore", "inpaint": "inpaint"}


def resolve_task(task: str | None, scale: int | None, inp_channels: int) -> str:
    if task is None:
        if inp_channels == 4:
            return "inpaint"
        return "deblur" if scale is None else "sr"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (or omitted to infer it), got {task!r}")
    if task == "sr" and scale is None:
        raise ValueError("task 'sr' needs a scale (4, 2 or 1)")
    return task


class _DiffIRBase(nn.Module):
    """What both stages share: the DIRformer ``G``, task bookkeeping, input checks, clear load errors."""

    stage_prefixes: tuple[str, ...] = ()  # top-level keys only this stage has
    other_stage: tuple[str, str] = ("", "")  # (name, a top-level key prefix only the other stage has)

    def __init__(self, n_encoder_res, inp_channels, out_channels, scale, dim, num_blocks, num_refinement_blocks,
                 heads, ffn_expansion_factor, bias, LayerNorm_type, task, dual_pixel_task, impl, use_checkpoint):
        super().__init__()
        self.task = resolve_task(task, scale, inp_channels)
        self.scale = scale if self.task == "sr" else 1
        self.inp_channels = inp_channels
        self.out_channels = out_channels
        self.dim = dim
        self.G = DIRformer(inp_channels=inp_channels, out_channels=out_channels, dim=dim, num_blocks=num_blocks,
                           num_refinement_blocks=num_refinement_blocks, heads=heads,
                           ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                           head=_HEAD_OF_TASK[self.task], scale=self.scale, dual_pixel_task=dual_pixel_task,
                           impl=impl, use_checkpoint=use_checkpoint)
        # LQ pixel-unshuffle factor for CPEN: the DIRformer's own for SR, 4 otherwise (official)
        self.cpen_lq_unshuffle = self.G.input_unshuffle if self.task == "sr" else GT_UNSHUFFLE

    @property
    def size_multiple(self) -> int:
        """LQ height and width must be multiples of this."""
        return self.G.size_multiple

    @property
    def impl(self) -> str:
        """The DIRformer implementation in use: 'auto', 'fast' or 'plain' (same weights)."""
        return self.G.impl

    @impl.setter
    def impl(self, impl: str) -> None:
        self.G.impl = impl

    def check_lq(self, lq: torch.Tensor) -> None:
        if not isinstance(lq, torch.Tensor) or lq.dim() != 4:
            shape = tuple(lq.shape) if isinstance(lq, torch.Tensor) else type(lq).__name__
            raise ValueError(f"{type(self).__name__} expects a 4D (B, C, H, W) LQ tensor, got {shape}")
        if lq.shape[1] != self.inp_channels:
            hint = " (inpainting takes the masked image and the mask: 4 channels)" if self.task == "inpaint" else ""
            raise ValueError(f"{type(self).__name__} ({self.task}) expects {self.inp_channels}-channel input, "
                             f"got {lq.shape[1]} channels{hint}")
        h, w = lq.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"{type(self).__name__} ({self.task}, scale {self.scale}) needs input height and width "
                             f"divisible by {m}, got {h}x{w}; pad with diffir.utils.pad_to_multiple(x, {m}) "
                             f"and crop the output back")

    def check_gt(self, lq: torch.Tensor, gt: torch.Tensor) -> None:
        expected = (lq.shape[0], self.out_channels, lq.shape[2] * self.scale, lq.shape[3] * self.scale)
        if not isinstance(gt, torch.Tensor) or tuple(gt.shape) != expected:
            shape = tuple(gt.shape) if isinstance(gt, torch.Tensor) else type(gt).__name__
            raise ValueError(f"ground truth must have shape {expected} (LQ {tuple(lq.shape)} x scale {self.scale}), "
                             f"got {shape}")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` with short, specific errors for a strict load that would fail."""
        if strict:
            name, key = self.other_stage
            if any(k.startswith(key) for k in state_dict) and not any(
                    k.startswith(p) for k in state_dict for p in self.stage_prefixes):
                raise RuntimeError(f"this is a {name} checkpoint (it has '{key}*' keys) but the network is "
                                   f"{type(self).__name__}; build {name} for it, or load with strict=False "
                                   f"to take only the matching DIRformer 'G.*' weights")
            mismatch = mismatch_lines(self.state_dict(), state_dict)
            if mismatch:
                raise RuntimeError(f"checkpoint does not match {type(self).__name__}({self.task}, scale {self.scale}); "
                                   + "; ".join(mismatch) + ". Check the network options (task, scale, dim, "
                                   "num_blocks, n_encoder_res, inp_channels) against the checkpoint's.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


@ARCH_REGISTRY.register()
class DiffIRS1(_DiffIRBase):
    """Stage one: CPEN_S1 (LQ + GT -> IPR) and the DIRformer G modulated by that IPR."""

    stage_prefixes = ("E.",)
    other_stage = ("DiffIRS2", "condition.")

    def __init__(self, n_encoder_res=6, inp_channels=3, out_channels=3, scale=None, dim=48, num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks=4, heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False,
                 LayerNorm_type="WithBias", task=None, dual_pixel_task=False, impl="auto", use_checkpoint=False):
        super().__init__(n_encoder_res, inp_channels, out_channels, scale, dim, num_blocks, num_refinement_blocks,
                         heads, ffn_expansion_factor, bias, LayerNorm_type, task, dual_pixel_task, impl, use_checkpoint)
        self.E = CPEN(inp_channels, self.cpen_lq_unshuffle, gt_channels=out_channels, n_encoder_res=n_encoder_res)

    def forward(self, lq: torch.Tensor, gt: torch.Tensor):
        self.check_lq(lq)
        self.check_gt(lq, gt)
        ipr = self.estimate_ipr(lq, gt)
        restored = self.G(lq, ipr)
        return (restored, [ipr]) if self.training else restored

    def estimate_ipr(self, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """CPEN_S1's IPR of an LQ / ground-truth pair: (B, 256), the target of stage two."""
        return self.E(lq, gt)


@ARCH_REGISTRY.register()
class DiffIRS2(_DiffIRBase):
    """Stage two: CPEN_S2 + the IPR diffusion estimate the IPR from the LQ image alone; G restores."""

    stage_prefixes = ("condition.", "denoise.")
    other_stage = ("DiffIRS1", "E.")

    def __init__(self, n_encoder_res=6, inp_channels=3, out_channels=3, scale=None, dim=48, num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks=4, heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False,
                 LayerNorm_type="WithBias", n_denoise_res=1, linear_start=0.1, linear_end=0.99, timesteps=4,
                 task=None, dual_pixel_task=False, impl="auto", use_checkpoint=False):
        super().__init__(n_encoder_res, inp_channels, out_channels, scale, dim, num_blocks, num_refinement_blocks,
                         heads, ffn_expansion_factor, bias, LayerNorm_type, task, dual_pixel_task, impl, use_checkpoint)
        self.condition = CPEN(inp_channels, self.cpen_lq_unshuffle, gt_channels=0, n_encoder_res=n_encoder_res)
        self.denoise = IPRDenoiser(n_denoise_res=n_denoise_res, timesteps=timesteps)
        self.diffusion = IPRDiffusion(self.denoise, self.condition, linear_start=linear_start,
                                      linear_end=linear_end, timesteps=timesteps)

    @property
    def timesteps(self) -> int:
        """Reverse steps of the IPR diffusion (T)."""
        return self.diffusion.num_timesteps

    def estimate_ipr(self, lq: torch.Tensor, noise: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """The (B, 256) IPR of ``lq``: CPEN_S2's condition, then the reverse diffusion from ``noise``.

        ``lq``: a tensor, or with ``tile`` anything :meth:`CPEN.forward_tiled` reads region by region.

        ``tile`` (input pixels): run CPEN_S2's convolutions tile by tile (:meth:`CPEN.forward_tiled`),
        the same vector up to float summation order with memory bounded by the tile.
        """
        if tile is not None:
            cond = self.condition.forward_tiled(lq, tile)
        else:  # beside the fast DIRformer, CPEN's convs run channels_last too: 10% faster on the CPU
            fast = self.G.resolve_impl(lq.device) == "fast"
            cond = self.condition(lq.contiguous(memory_format=torch.channels_last) if fast else lq)
        return self.diffusion.sample(cond, noise)

    def restore_with_ipr(self, lq: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        """The DIRformer's restoration of ``lq`` (a whole input or a tile of one) modulated by ``ipr``."""
        return self.G(lq, ipr)

    def forward(self, lq: torch.Tensor, ipr_s1: torch.Tensor | None = None, *, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None, ipr_only: bool = False):
        self.check_lq(lq)
        if self.training:
            ipr, iprs = self.diffusion(lq, ipr_s1, noise=noise, generator=generator)
            return (ipr, iprs) if ipr_only else (self.G(lq, ipr), iprs)
        if noise is None:
            noise = self.diffusion.initial_noise(lq, generator)
        ipr = self.estimate_ipr(lq, noise)
        return ipr if ipr_only else self.restore_with_ipr(lq, ipr)
