"""The unconditional diffusion UNet that DiffLoss uses as its frozen prior.

Its state dict is key-for-key compatible with OpenAI guided-diffusion's ``UNetModel``, so the
released ``256x256_diffusion_uncond.pt`` (the prior of the DiffLoss paper) loads with strict
matching, and it is built from the same keyword arguments as guided-diffusion's ``create_model``.
Smaller configurations (tests, priors trained with :mod:`diffir.models.diffusion_prior_model`) use
the same class.

``forward(x, t)`` returns ``(output, h_space)``: the noise prediction (plus the learned-variance
channels when ``learn_sigma``) and the middle-block features, DiffLoss's "h-space".

Differences from guided-diffusion that do not change the weights or the maths:

* Activation checkpointing is off unless ``use_checkpoint`` is set, and then uses
  ``torch.utils.checkpoint``. Guided-diffusion's attention always checkpoints through a custom
  autograd function that cannot backpropagate to the input when the weights are frozen, which is
  exactly how DiffLoss uses the prior.
* Attention runs through ``F.scaled_dot_product_attention`` (softmax(q kᵀ / √ch) v, the same value
  as guided-diffusion's 1/⁴√ch scaling of both q and k), so fused kernels are used where available.
* ``use_fp16`` is accepted so that a ``create_model`` argument set works unchanged, but the weights
  stay in float32, as in the DiffLoss code path; lower precision is a caller's autocast choice.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import CheckpointError, read_state_dict
from ..utils.state_dict import mismatch_lines

NUM_CLASSES = 1000  # ImageNet labels of guided-diffusion's class-conditional models
GROUPS = 32  # guided-diffusion normalises every feature map with 32-group GroupNorm
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
OFFICIAL_PRIOR = ("256x256_diffusion_uncond.pt from the openai/guided-diffusion release "
                  "(https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt)")


def parse_channel_mult(channel_mult, image_size: int) -> tuple[float, ...]:
    """``""`` picks guided-diffusion's default for ``image_size``; otherwise "1,2,2" or a sequence."""
    if channel_mult in ("", None):
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(f"channel_mult has no default for image_size {image_size} (defaults exist for "
                             f"{sorted(DEFAULT_CHANNEL_MULT)}); give it explicitly, e.g. channel_mult: '1,2,2'")
        return DEFAULT_CHANNEL_MULT[image_size]
    values = channel_mult.split(",") if isinstance(channel_mult, str) else channel_mult
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"channel_mult must be numbers like '1,2,2', got {channel_mult!r}") from err


def parse_attention_resolutions(attention_resolutions, image_size: int) -> set[int]:
    """Resolutions ("32,16,8") -> the downsampling factors ``image_size // res`` that get attention."""
    values = attention_resolutions.split(",") if isinstance(attention_resolutions, str) else attention_resolutions
    if isinstance(values, int):
        values = [values]
    factors = set()
    for value in values:
        if str(value).strip() == "":
            continue
        res = int(value)
        if res <= 0 or image_size % res:
            raise ValueError(f"attention resolution {res} must divide image_size {image_size}")
        factors.add(image_size // res)
    return factors


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches start as the identity (guided-diffusion's init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """32-group GroupNorm computed in at least float32, whatever the input precision."""

    def __init__(self, channels: int):
        super().__init__(GROUPS, channels)

    def forward(self, x):
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""

    def forward(self, x, emb):
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the blocks that take it."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 conv (key ``op``), used when ``resblock_updown`` is off."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (key ``conv``), used when ``resblock_updown`` is off."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


def _run(fn, *args, use_checkpoint: bool):
    """Call ``fn``; with activation checkpointing when asked and autograd is recording."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class ResBlock(TimestepBlock):
    """GroupNorm-SiLU-conv twice, with the timestep injected as a bias or (scale, shift) of the 2nd norm.

    ``resample`` ('up', 'down' or None) makes it the resolution-changing block of ``resblock_updown``:
    the feature path is resampled between the first SiLU and conv, the skip path alongside.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = False, resample: str | None = None, use_checkpoint: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        return _run(self._forward, x, emb, use_checkpoint=self.use_checkpoint)

    def _forward(self, x, emb):
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(_resample(norm_act(x), self.resample))
        x = _resample(x, self.resample)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    ``qkv`` and ``proj_out`` are 1x1 Conv1d layers (guided-diffusion's keys and shapes). The legacy
    order splits the heads before q/k/v (what the released checkpoints use); the new order splits
    q/k/v first.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_new_attention_order: bool = False, use_checkpoint: bool = False):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise ValueError(f"attention channels {channels} are not divisible by num_head_channels "
                                 f"{num_head_channels}")
            num_heads = channels // num_head_channels
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.use_new_attention_order = use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        return _run(self._forward, x, use_checkpoint=self.use_checkpoint)

    def _forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, ch = qkv.shape[-1], c // self.num_heads
        if self.use_new_attention_order:
            q, k, v = (t.reshape(b * self.num_heads, ch, length) for t in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj_out(h.transpose(1, 2).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


@ARCH_REGISTRY.register()
class DiffusionPriorUNet(nn.Module):
    """Guided-diffusion UNet from ``create_model``'s keyword arguments; forward -> (output, h_space).

    Args (as in guided-diffusion's ``create_model``):
        image_size: training resolution of the prior; sets the default ``channel_mult`` and turns
            ``attention_resolutions`` into downsampling factors. Other input sizes run as long as
            they are divisible by 2 ** (len(channel_mult) - 1).
        num_channels: base width. num_res_blocks: ResBlocks per level.
        channel_mult: "" for guided-diffusion's default per image_size, or "1,2,2" / a list.
        learn_sigma: 6 output channels (ε and the variance interpolation) instead of 3.
        class_cond: adds an ImageNet label embedding; forward then needs ``y``.
        use_checkpoint: activation checkpointing in every ResBlock and AttentionBlock.
        attention_resolutions: feature resolutions with attention, e.g. "32,16,8".
        num_heads / num_head_channels / num_heads_upsample: heads; num_head_channels (when not -1)
            fixes the width per head instead; num_heads_upsample (-1: num_heads) in the decoder.
        use_scale_shift_norm: timestep as FiLM scale/shift of the second norm of each ResBlock.
        dropout: inside ResBlocks. resblock_updown: resample with ResBlocks, not conv layers.
        use_fp16: accepted for argument compatibility, no effect (see the module docstring).
        use_new_attention_order: split q/k/v before heads.
        in_channels: image channels (not a create_model argument; guided-diffusion fixes it to 3).
    """

    def __init__(self, image_size: int = 256, num_channels: int = 256, num_res_blocks: int = 2, channel_mult="",
                 learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
                 attention_resolutions="16", num_heads: int = 1, num_head_channels: int = -1,
                 num_heads_upsample: int = -1, use_scale_shift_norm: bool = False, dropout: float = 0.0,
                 resblock_updown: bool = False, use_fp16: bool = False, use_new_attention_order: bool = False,
                 in_channels: int = 3):
        super().__init__()
        channel_mult = parse_channel_mult(channel_mult, image_size)
        attention_factors = parse_attention_resolutions(attention_resolutions, image_size)
        widths = [int(m * num_channels) for m in channel_mult]
        bad = sorted({w for w in widths if w % GROUPS})
        if bad:
            raise ValueError(f"every level width (num_channels x channel_mult = {widths}) must be divisible by "
                             f"{GROUPS} for GroupNorm; {bad} are not")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.model_channels = num_channels
        self.num_classes = NUM_CLASSES if class_cond else None
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        emb_dim = 4 * num_channels

        def res_block(ch_in, ch_out=None, resample=None):
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, resample, use_checkpoint)

        def attention(ch, heads):
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order, use_checkpoint)

        self.time_embed = nn.Sequential(nn.Linear(num_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_dim)

        # Encoder: per level, num_res_blocks ResBlocks (+ attention), then a downsampling block.
        ch = widths[0]
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        factor = 1
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, width)]
                ch = width
                if factor in attention_factors:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(widths) - 1:
                down = res_block(ch, ch, "down") if resblock_updown else Downsample(ch)
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                factor *= 2

        # Bottleneck; its output is the h-space.
        self.middle_block = TimestepEmbedSequential(res_block(ch), attention(ch, num_heads), res_block(ch))

        # Decoder: per level, num_res_blocks + 1 ResBlocks over [features, skip] (+ attention),
        # the last one followed by an upsampling block except at full resolution.
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), width)]
                ch = width
                if factor in attention_factors:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res_block(ch, ch, "up") if resblock_updown else Upsample(ch))
                    factor //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1)))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Switch activation checkpointing of every ResBlock and AttentionBlock on or off."""
        for module in self.modules():
            if isinstance(module, (ResBlock, AttentionBlock)):
                module.use_checkpoint = enabled

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None):
        """x: (B, C, H, W) image at noise level ``timesteps`` (B,) -> (output (B, C or 2C, H, W), h_space)."""
        if (y is None) != (self.num_classes is None):
            raise ValueError("pass class labels y exactly when the prior is class-conditional (class_cond)")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"prior input size {tuple(x.shape[-2:])} must be divisible by {self.size_multiple}")
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        if timesteps.numel() not in (1, x.shape[0]):
            raise ValueError(f"got {timesteps.numel()} timesteps for a batch of {x.shape[0]}")
        timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        h_space = h
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h), h_space


# ---------------------------------------------------------------------------------------- weights
def read_prior_checkpoint(path) -> dict[str, torch.Tensor]:
    """The UNet state dict in ``path``: a guided-diffusion file, or a basicsr checkpoint
    (``params_ema`` preferred over ``params``) such as the own-prior trainer writes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"diffusion prior checkpoint not found: {path}. The DiffLoss paper's prior is "
                                f"{OFFICIAL_PRIOR}; or train your own with options/diffloss/train_own_prior.yml")
    try:
        return read_state_dict(path)[0]
    except CheckpointError as err:
        raise ValueError(str(err)) from err


def load_prior_weights(model: DiffusionPriorUNet, path) -> None:
    """Strictly load ``path`` into ``model``; on a mismatch, list the offending keys."""
    state = read_prior_checkpoint(path)
    mismatch = mismatch_lines(model.state_dict(), state, shown=12)
    if mismatch:
        raise ValueError("\n  ".join([f"{path} does not match the prior architecture (prior_opt); fix prior_opt to "
                                       f"the options the checkpoint was trained with."] + mismatch))
    # float32 weights whatever the file stores; a model still on the meta device takes the loaded
    # tensors as they are (assign), a live one copies them into its own parameters on its device
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_prior(prior_opt: dict | None, prior_path=None) -> DiffusionPriorUNet:
    """A DiffusionPriorUNet from its options, with weights from ``prior_path`` when given."""
    prior_opt = dict(prior_opt or {})
    prior_opt.pop("type", None)
    unknown = sorted(set(prior_opt) - set(inspect.signature(DiffusionPriorUNet).parameters))
    if unknown:
        raise ValueError(f"prior_opt has options DiffusionPriorUNet does not take: {unknown}")
    if prior_path is None:
        return DiffusionPriorUNet(**prior_opt)
    with torch.device("meta"):  # no initialisation work or memory for weights about to be replaced
        model = DiffusionPriorUNet(**prior_opt)
    load_prior_weights(model, prior_path)
    return model


__all__ = ["DiffusionPriorUNet", "build_prior", "count_parameters", "load_prior_weights", "read_prior_checkpoint",
           "timestep_embedding", "OFFICIAL_PRIOR"]
