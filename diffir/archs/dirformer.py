"""DIRformer: the restoration backbone of DiffIR.

DIRformer is Restormer (Zamir et al., CVPR 2022) with every transformer block modulated by the
IPR, the 256-d prior vector estimated by CPEN (stage one) or by the IPR diffusion (stage two):

* DMTA (dynamic multi-head transposed attention): Restormer's MDTA, attention over channels.
* DGFN (dynamic gated feed-forward network): Restormer's GDFN.
* Both first apply ``x * a + b`` with ``(a, b) = Linear(ipr)`` to the layer-normalised features.

Module and attribute names (``encoder_level1``, ``norm1.body``, ``kernel.0`` ...) are the official
ones so that official checkpoints load with ``strict=True`` and ours load into the official code;
that is why the four-level U-Net is spelled out level by level instead of built in a loop.

Task heads (``head``):

* ``'sr'``: the official SR / real-world SR head. The tail always upsamples x4; x2 and x1 reach
  their output size by pixel-unshuffling the LR input by 2 or 4 first (``input_unshuffle``).
  Output = tail(features) + nearest-upsampled LR input.
* ``'restore'``: same-resolution restoration (deblurring): a 3x3 conv plus the input residual.
* ``'inpaint'``: the inpainting generator: no refinement blocks, no residual (its 4-channel input
  is the masked image plus the mask), optional dual-pixel skip as in the official code.

Two implementations share every parameter (``impl``; the state dict is the same):

* ``'plain'``: the blocks below, a line-by-line transcription of the official maths, verified
  bit-exact in float64 against the official code.
* ``'fast'``: the same function computed with less memory traffic from the same modules
  (dirformer_fast.py).

The default ``'auto'`` takes the fast path on the CPU and the plain path on GPUs, where the fast
path measured slower (H200, full-size SR x4 in fp32: 0.58x inference at 64x64 LR, 0.50x training;
see docs/speed.md). Under ``torch.compile`` it also computes the x4 SR tail as the fast path does
(5x5 convs at LR resolution) on GPUs.

``use_checkpoint=True`` recomputes each transformer block in the backward pass instead of storing
its activations (training memory for compute), for either implementation.

The blocks take no such flags: the DIRformer sets, once per change of ``impl``, ``use_checkpoint``
or device, how each level (:class:`IPRSequential`) runs its blocks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from . import dirformer_fast
from .cpen import IPR_DIM

HEADS = ("sr", "restore", "inpaint")
IMPLS = ("auto", "fast", "plain")
LAYER_NORM_EPS = 1e-5


# --------------------------------------------------------------------------- LayerNorm
class _LayerNormAffine(nn.Module):
    """Holds the LayerNorm gain (and bias); a module of its own only to keep the official
    ``norm.body.weight`` key."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) tensor (eps 1e-5, biased variance).

    ``'BiasFree'`` (Restormer's variant) scales by 1/std without subtracting the mean, although the
    variance itself is the centred one; ``'WithBias'`` is the usual LayerNorm.
    """

    def __init__(self, dim: int, layer_norm_type: str):
        super().__init__()
        if layer_norm_type not in ("BiasFree", "WithBias"):
            raise ValueError(f"LayerNorm_type must be 'BiasFree' or 'WithBias', got {layer_norm_type!r}")
        self.subtract_mean = layer_norm_type == "WithBias"
        self.eps = LAYER_NORM_EPS
        self.body = _LayerNormAffine(dim, with_bias=self.subtract_mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(dim=1, keepdim=True, unbiased=False)
        if self.subtract_mean:
            x = x - x.mean(dim=1, keepdim=True)
        x = x / torch.sqrt(var + self.eps) * self.body.weight[:, None, None]
        if self.body.bias is not None:
            x = x + self.body.bias[:, None, None]
        return x


def ipr_modulation(dim: int) -> nn.Sequential:
    """Linear map from the IPR to a per-channel scale and shift (the paper's W1·Z and W2·Z)."""
    return nn.Sequential(nn.Linear(IPR_DIM, 2 * dim, bias=False))


def modulate(x: torch.Tensor, kernel: nn.Module, ipr: torch.Tensor) -> torch.Tensor:
    scale, shift = kernel(ipr)[:, :, None, None].chunk(2, dim=1)
    return x * scale + shift  # a plain scale, no "1 +": as in the paper and the official code


# --------------------------------------------------------------------------- DMTA and DGFN
class DynamicTransposedAttention(nn.Module):
    """DMTA: IPR modulation, then multi-head attention across channels (a C x C map per head)."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels ({dim}) must be divisible by the number of heads ({num_heads})")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.kernel = ipr_modulation(dim)
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = modulate(x, self.kernel, ipr)
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # b (head c) h w -> b head c (h w)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class DynamicGatedFeedForward(nn.Module):
    """DGFN: IPR modulation, then a depthwise-conv gated feed-forward, GELU(x1) * x2."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)
        self.kernel = ipr_modulation(dim)

    def forward(self, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        x = self.project_in(modulate(x, self.kernel, ipr))
        x1, x2 = self.dwconv(x).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class DynamicTransformerBlock(nn.Module):
    """``x + DMTA(LN(x))``, then ``x + DGFN(LN(x))``."""

    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, layer_norm_type):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, layer_norm_type)
        self.attn = DynamicTransposedAttention(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, layer_norm_type)
        self.ffn = DynamicGatedFeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), ipr)
        return x + self.ffn(self.norm2(x), ipr)


def plain_block(block: DynamicTransformerBlock, x: torch.Tensor, ipr: torch.Tensor,
                overwrite: bool = False) -> torch.Tensor:
    """``block(x, ipr)``; ``overwrite`` (``x`` is not read again) allows, but does not ask for, reusing x's
    memory."""
    return block(x, ipr)


class IPRSequential(nn.Sequential):
    """A stack of dynamic transformer blocks that all receive the same IPR.

    ``run_block(block, x, ipr, overwrite)`` computes one block (the plain forward, or the fast path's
    function of the same weights), which may reuse ``x``'s memory when ``overwrite``: every block's input
    but the first's: the output of the block before, which nothing else holds (the fast path runs the
    blocks as functions, so no forward hook of theirs sees it). The level's input may be held elsewhere,
    by the caller or a forward hook, and is never overwritten. ``use_checkpoint`` recomputes each block
    in the backward pass when training. The DIRformer sets both.
    """

    run_block = staticmethod(plain_block)
    use_checkpoint = False

    def forward(self, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for index, block in enumerate(self):
            if recompute:
                x = checkpoint(self.run_block, block, x, ipr, use_reentrant=False)
            else:
                x = self.run_block(block, x, ipr, overwrite=index > 0)
        return x


def call_level(level: IPRSequential, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
    return level(x, ipr)


@torch.compiler.disable(reason="the fast path's row bands ran faster eagerly than compiled on the whole map")
def call_level_outside_graph(level: IPRSequential, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
    return level(x, ipr)


# --------------------------------------------------------------------------- resampling
class Downsample(nn.Module):
    """conv3x3 C -> C/2, then pixel-unshuffle: half the resolution, twice the channels."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(dirformer_fast.dense_if_weight_dwarfs(self.body[0], x))


class Upsample(nn.Module):
    """conv3x3 C -> 2C, then pixel-shuffle: twice the resolution, half the channels."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(dirformer_fast.dense_if_weight_dwarfs(self.body[0], x))


def x4_upsampler_tail(channels: int, out_channels: int) -> nn.Sequential:
    """The official SR tail: two rounds of conv3x3 (C -> 4C) + pixel-shuffle(2), then conv3x3 -> out.
    Keys: tail.0.0, tail.0.2 (the upsampler convs) and tail.1 (the output conv)."""
    upsampler = nn.Sequential(
        nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2),
        nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2),
    )
    return nn.Sequential(upsampler, nn.Conv2d(channels, out_channels, 3, padding=1))


# --------------------------------------------------------------------------- DIRformer
class DIRformer(nn.Module):
    """Four-level encoder/decoder of dynamic transformer blocks, conditioned on an IPR (B, 256).

    Args:
        inp_channels: channels of the image the network is given (4 for inpainting: image + mask).
        out_channels: channels of the restored image.
        dim: channels at level 1 (level k has dim * 2**(k-1); decoder level 1 and refinement 2*dim).
        num_blocks: transformer blocks at levels 1-4 (the decoder reuses the counts of levels 1-3).
        num_refinement_blocks: blocks after decoder level 1 (unused by the inpainting head).
        heads: attention heads per level.
        head: 'sr', 'restore' or 'inpaint' (see the module docstring).
        scale: SR output scale, 1, 2 or 4 (only for head='sr').
        dual_pixel_task: inpainting only; adds the official 1x1 skip from level-1 features.
        impl: 'auto' (fast on the CPU, plain elsewhere), 'fast' or 'plain' (see the module docstring);
            settable later, the weights are shared.
        use_checkpoint: recompute each transformer block in the backward pass (activation
            checkpointing) when training with gradients enabled; settable later.
    """

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
                 head="restore", scale=4, dual_pixel_task=False, impl="auto", use_checkpoint=False):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 entries (one per level), got {num_blocks} and {heads}")
        if head == "sr" and scale not in (1, 2, 4):
            raise ValueError(f"SR scale must be 1, 2 or 4 (the official x4 tail after a pixel-unshuffle), got {scale}")
        if dual_pixel_task and head != "inpaint":
            raise ValueError("dual_pixel_task exists only in the inpainting generator (inp_channels=4)")
        self.head = head
        self.scale = scale if head == "sr" else 1
        # x2 / x1 SR run the network on a pixel-unshuffled LR image so that the fixed x4 tail fits.
        self.input_unshuffle = 4 // scale if head == "sr" else 1
        self.dual_pixel_task = dual_pixel_task

        def level(channels, n, num_heads):
            return IPRSequential(*[DynamicTransformerBlock(channels, num_heads, ffn_expansion_factor, bias,
                                                           LayerNorm_type) for _ in range(n)])

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(inp_channels * self.input_unshuffle ** 2, d1, 3, padding=1, bias=False)

        self.encoder_level1 = level(d1, num_blocks[0], heads[0])
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = level(d2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = level(d3, num_blocks[2], heads[2])
        self.down3_4 = Downsample(d3)
        self.latent = level(d4, num_blocks[3], heads[3])

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = level(d3, num_blocks[2], heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = level(d2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(d2)  # no channel reduction: level 1 of the decoder works at 2*dim
        self.decoder_level1 = level(d2, num_blocks[0], heads[0])

        if head != "inpaint":  # the official inpainting generator has its refinement stage commented out
            self.refinement = level(d2, num_refinement_blocks, heads[0])
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, kernel_size=1, bias=bias)
        if head == "sr":
            self.tail = x4_upsampler_tail(d2, out_channels)
        else:
            self.output = nn.Conv2d(d2, out_channels, 3, padding=1, bias=bias)
        self._use_checkpoint = bool(use_checkpoint)
        # under torch.compile, run the levels that the fast path's eager inference would run on row bands
        # eagerly, outside the graph (see level_caller). compile_network turns it on unless asked for
        # fullgraph; graph breaks also fail a strict torch.export
        self.row_bands_outside_graph = False
        self._running = None  # the implementation the levels are set up for
        self.impl = impl

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self._impl = impl
        self._set_up_levels(self.resolve_impl(self.patch_embed.proj.weight.device))

    @property
    def use_checkpoint(self) -> bool:
        return self._use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, enabled: bool) -> None:
        self._use_checkpoint = bool(enabled)
        self._set_up_levels(self._running)

    def _set_up_levels(self, impl: str) -> None:
        """Tell every level how to run its blocks (one walk over the modules)."""
        run_block = dirformer_fast.transformer_block if impl == "fast" else plain_block
        for module in self.modules():
            if isinstance(module, IPRSequential):
                module.run_block = run_block
                module.use_checkpoint = self._use_checkpoint
        self._running = impl

    def resolve_impl(self, device: torch.device) -> str:
        """'auto' is the fast path on the CPU and the plain path elsewhere: on GPUs the plain path
        measured faster (the fast path launches more, smaller kernels; docs/speed.md)."""
        if self._impl != "auto":
            return self._impl
        return "fast" if device.type == "cpu" else "plain"

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (three 2x downsamplings)."""
        return 8 * self.input_unshuffle

    def forward(self, inp_img: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
        impl = self.resolve_impl(inp_img.device)
        if impl != self._running:  # 'auto' on a network moved to another device since
            self._set_up_levels(impl)
        fast = impl == "fast"

        x = F.pixel_unshuffle(inp_img, self.input_unshuffle) if self.input_unshuffle > 1 else inp_img
        if fast:  # every conv, shuffle and block below then keeps channels_last
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.patch_embed.proj(x)
        enc1 = self.level_caller(emb)(self.encoder_level1, emb, ipr)
        x = self.down1_2(enc1)
        enc2 = self.level_caller(x)(self.encoder_level2, x, ipr)
        x = self.down2_3(enc2)
        enc3 = self.level_caller(x)(self.encoder_level3, x, ipr)
        x = self.down3_4(enc3)
        latent = self.level_caller(x)(self.latent, x, ipr)

        x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = self.level_caller(x)(self.decoder_level3, x, ipr)
        x = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = self.level_caller(x)(self.decoder_level2, x, ipr)
        x = torch.cat([self.up2_1(dec2), enc1], 1)
        dec1 = self.level_caller(x)(self.decoder_level1, x, ipr)

        if self.head == "inpaint":
            out = self.output(dec1 + self.skip_conv(emb) if self.dual_pixel_task else dec1)
        else:
            feat = self.level_caller(dec1)(self.refinement, dec1, ipr)
            if self.head == "restore":
                out = self.output(feat) + inp_img
            else:
                upsampled = F.interpolate(inp_img, scale_factor=self.scale, mode="nearest")
                # compiled, 'auto' composes the x4 tail on any device: on an H200 that was 2-12% faster than
                # the three convs (compiled, CUDA graphs; measured when the border row and column were
                # computed by the three convs), while eagerly the extra launches ate the saving there
                composite = fast or (self._impl == "auto" and torch.compiler.is_compiling())
                out = dirformer_fast.sr_tail(self.tail, feat, upsampled) if composite else self.tail(feat) + upsampled
        return out.contiguous() if fast else out

    def level_caller(self, x: torch.Tensor) -> Callable[[IPRSequential, torch.Tensor, torch.Tensor], torch.Tensor]:
        """How forward calls a level on ``x``: :func:`call_level`, or under torch.compile, where the fast
        path's eager inference runs ``x`` on row bands and ``row_bands_outside_graph`` is on,
        :func:`call_level_outside_graph`: the level runs eagerly, between graph breaks (compiled on the
        whole map, those levels ran slower; docs/speed.md). Returned rather than called, so that the
        break falls in forward itself: a break inside a helper makes dynamo compile the helper as a
        frame of its own, shared by all levels, whose cache of one entry per level and input size
        reached dynamo's recompile limit after a few sizes."""
        h, w = x.shape[-2:]
        if (self.row_bands_outside_graph and self._running == "fast" and torch.compiler.is_compiling()
                and not torch.is_grad_enabled() and dirformer_fast.rows_per_band(h, w, x.device) < h):
            return call_level_outside_graph
        return call_level
