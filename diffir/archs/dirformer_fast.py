"""The fast path of the DIRformer: the function of its plain blocks (dirformer.py), computed with
less memory traffic from the same modules. It has no parameters of its own, so both paths share one
state dict; ``DIRformer(impl=...)`` picks the path.

* channels_last: the network runs in ``channels_last`` memory format, so (B, C, H, W) feature maps
  are (B, H*W, C) token matrices without copies: LayerNorm reduces over the contiguous channel axis
  and depthwise convolutions use their fast channels-last kernels.
* Folded modulation: the LayerNorm affine and the IPR scale/shift act per (sample, channel), so they
  fold into a per-sample copy of the following 1x1 conv (one batched GEMM, no pass over the tokens).
* Attention: the C x C logits are normalised instead of q and k, and ``project_out`` folds into the
  attention map, so "attn @ v, project, add the residual" is one GEMM.
* Without autograd, the blocks run on bands of rows that fit in the CPU's cache (:func:`row_bands`,
  with the halo row each side that the 3x3 depthwise convs read): the feed-forward band by band,
  the attention's q.k^T and norms summed over bands (only v is kept whole). At 128x128 and larger
  this made inference 10-30% faster than streaming each wide activation through memory. The x4
  SR tail runs on bands too, added in place into the upsampled image (:func:`sr_tail`; at 256x256 LR
  its activations would otherwise take over a gigabyte), and the feed-forward gate multiplies in place.

It matches the plain path to float rounding (about 1e-6 in float32, 1e-13 in float64).
``scaled_dot_product_attention`` is not used: its "sequence" here would be the channels (<= 512)
and its head dimension H*W, far beyond the 256 of the flash kernels; on the CPU it measured no
faster than the explicit products, and the explicit form is what lets the norms and
``project_out`` fold in.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

F_NORMALIZE_EPS = 1e-12  # the norm floor of F.normalize, which the plain attention uses


def tokens_of(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``image`` is channels_last."""
    b, c, h, w = image.shape
    return image.permute(0, 2, 3, 1).reshape(b, h * w, c)


def image_of(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) contiguous tokens -> a channels_last (B, C, H, W) view."""
    b, _, c = tokens.shape
    return tokens.view(b, h, w, c).permute(0, 3, 1, 2)


def normalize_tokens(norm: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A ChannelLayerNorm of (B, N, C) tokens without its gain and bias (those fold into the next
    1x1 conv, see :func:`modulated_projections`)."""
    if norm.subtract_mean:
        return F.layer_norm(tokens, tokens.shape[-1:], eps=norm.eps)
    centred = tokens - tokens.mean(dim=-1, keepdim=True)
    return tokens * torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + norm.eps)


def fold_modulation(norm: nn.Module, kernel: nn.Module, ipr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LayerNorm affine (g, b) and the IPR modulation (a, s) as one per-(sample, channel) gain and
    shift: ``(n*g + b)*a + s = n*(g*a) + (b*a + s)``. Returns (gain, shift), each (B, C)."""
    scale, shift = kernel(ipr).chunk(2, dim=1)
    if norm.body.bias is not None:
        shift = shift + scale * norm.body.bias
    return scale * norm.body.weight, shift


def depthwise(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
    """A depthwise 3x3 conv of (B, H*W, C) tokens through their channels_last image view."""
    image = image_of(tokens, h, w)
    return tokens_of(F.conv2d(image, weight, bias, padding=1, groups=image.shape[1]))


def folded_projections(norm: nn.Module, kernel: nn.Module, ipr: torch.Tensor, pointwise: nn.Conv2d,
                       dwconv: nn.Conv2d, chunks: int) -> list[tuple]:
    """The per-sample 1x1 conv weights (B, C, out) and biases (B, 1, out) of ``pointwise(modulate(.))``,
    with the depthwise conv's weight and bias, for each of ``chunks`` chunks of its output.

    Each chunk (q, k, v; or the GELU branch and the gate) gets its own GEMM and depthwise conv, so
    that every chunk is a contiguous tensor: elementwise ops on a strided slice of one wide tensor
    are several times slower.
    """
    gain, shift = fold_modulation(norm, kernel, ipr)
    weight = pointwise.weight.flatten(1)  # (out, C)
    folded_bias = shift @ weight.t()  # (B, out)
    if pointwise.bias is not None:
        folded_bias = folded_bias + pointwise.bias
    size = pointwise.out_channels // chunks
    dw_biases = [None] * chunks if dwconv.bias is None else dwconv.bias.split(size)
    # split rather than index: the backward of a split is one concatenation
    return [(part_weight.transpose(1, 2), part_bias.unsqueeze(1), dw_weight, dw_bias)
            for part_weight, part_bias, dw_weight, dw_bias in zip(
                (weight * gain.unsqueeze(1)).split(size, dim=1), folded_bias.split(size, dim=1),
                dwconv.weight.split(size), dw_biases)]


def project(tokens: torch.Tensor, norm: nn.Module, parts: list[tuple], h: int, w: int) -> list[torch.Tensor]:
    """``dwconv(pointwise(modulate(norm(tokens))))``, chunk by chunk, for (B, H*W, C) tokens."""
    normalized = normalize_tokens(norm, tokens)
    return [depthwise(torch.baddbmm(bias, normalized, weight), dw_weight, dw_bias, h, w)
            for weight, bias, dw_weight, dw_bias in parts]


BAND_PIXELS = 4096  # pixels per band of rows without autograd: a band's activations stay in the CPU's cache


def row_bands(tokens: torch.Tensor, h: int, w: int):
    """Yield ``(band tokens with halo, its height, kept, placed)`` over bands of rows of (B, H*W, C) tokens.

    Each band comes with the row above and below it that a 3x3 depthwise conv reads; ``kept`` slices
    the band's own rows out of a result for the band with its halo, ``placed`` says where they are in
    the whole image. With autograd, under torch.compile (which fuses the passes itself), or when the
    image is small: one band, the whole image.
    """
    rows = max(4, BAND_PIXELS // w)
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or rows >= h:
        yield tokens, h, slice(None), slice(None)
        return
    for top in range(0, h, rows):
        bottom = min(top + rows, h)
        first, last = max(top - 1, 0), min(bottom + 1, h)
        yield (tokens[:, first * w:last * w], last - first, slice((top - first) * w, (bottom - first) * w),
               slice(top * w, bottom * w))


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def computes_in_float16(tokens: torch.Tensor) -> bool:
    """Whether the projections of ``tokens`` come out in float16 (float16 tokens, or float16 autocast)."""
    device = tokens.device.type
    return tokens.dtype == torch.float16 or (
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16)


def attention_residual(attn: nn.Module, norm: nn.Module, tokens: torch.Tensor, ipr: torch.Tensor, h: int,
                       w: int) -> torch.Tensor:
    """``tokens + DMTA(norm(tokens))`` for (B, H*W, C) tokens, the whole residual branch.

    The C x C attention pools over all pixels: q.k^T and the norms of q and k are summed band by
    band (:func:`row_bands`), and only v is kept for the whole image.
    """
    b, n, c = tokens.shape
    heads, head_channels = attn.num_heads, c // attn.num_heads
    parts = folded_projections(norm, attn.kernel, ipr, attn.qkv, attn.qkv_dwconv, 3)
    if computes_in_float16(tokens):  # q.k and q*q can overflow float16: normalise first, as the plain path does
        q, k, v = project(tokens, norm, parts, h, w)
        q_heads, k_heads = (t.view(b, n, heads, head_channels).permute(0, 2, 3, 1) for t in (q, k))
        logits = F.normalize(q_heads, dim=-1) @ F.normalize(k_heads, dim=-1).transpose(-2, -1) * attn.temperature
    else:  # normalising the C x C product instead of q and k saves two passes over them
        products, squares, values = 0, 0, []
        for band, band_h, kept, _ in row_bands(tokens, h, w):
            q, k, v = (t[:, kept] for t in project(band, norm, parts, band_h, w))
            # (B, heads, head_channels, pixels) views that matmul reads as transposed matrices
            q_heads, k_heads = (t.view(b, -1, heads, head_channels).permute(0, 2, 3, 1) for t in (q, k))
            # summed in at least float32: under bf16 autocast, one rounding per band would add up
            products = products + at_least_float32(q_heads @ k_heads.transpose(-2, -1))
            squares = squares + at_least_float32(torch.stack([q.square().sum(dim=1), k.square().sum(dim=1)]))
            values.append(v)
        v = values[0] if len(values) == 1 else torch.cat(values, dim=1)
        products, squares = products.to(q.dtype), squares.to(q.dtype)  # rounded once, back to the compute dtype
        q_norm, k_norm = squares.sqrt().clamp_min(F_NORMALIZE_EPS).view(2, b, heads, head_channels, 1)
        logits = products * (attn.temperature / q_norm) / k_norm.transpose(-2, -1)
    attention = logits.softmax(dim=-1)
    # project_out(attn @ v) = v @ (W_out . blockdiag(attn))^T: one GEMM over the pixels, plus the residual
    w_out = attn.project_out.weight.view(c, heads, head_channels).transpose(0, 1)  # (heads, C, head_channels)
    mix = (w_out @ attention).transpose(1, 2).reshape(b, c, c)
    residual = tokens if attn.project_out.bias is None else tokens + attn.project_out.bias
    return torch.baddbmm(residual, v, mix.transpose(1, 2))


def feed_forward_residual(ffn: nn.Module, norm: nn.Module, tokens: torch.Tensor, ipr: torch.Tensor, h: int,
                          w: int) -> torch.Tensor:
    """``tokens + DGFN(norm(tokens))`` for (B, H*W, C) tokens, the whole residual branch, band by band
    (:func:`row_bands`): the wide hidden activations of a band stay in the cache."""
    b, _, c = tokens.shape
    parts = folded_projections(norm, ffn.kernel, ipr, ffn.project_in, ffn.dwconv, 2)
    out = None
    for band, band_h, kept, placed in row_bands(tokens, h, w):
        x1, x2 = project(band, norm, parts, band_h, w)
        gated = F.gelu(x1)
        gated = (gated * x2 if torch.is_grad_enabled() else gated.mul_(x2))[:, kept]
        residual = band[:, kept] if ffn.project_out.bias is None else band[:, kept] + ffn.project_out.bias
        # one GEMM over all pixels of the batch
        result = torch.addmm(residual.reshape(-1, c), gated.reshape(-1, gated.shape[-1]),
                             ffn.project_out.weight.flatten(1).t()).view(b, -1, c)
        if placed == slice(None):  # the whole image (with autograd: no in-place writes)
            return result
        if out is None:
            out = torch.empty_like(tokens)
        out[:, placed] = result
    return out


def transformer_block(block: nn.Module, x: torch.Tensor, ipr: torch.Tensor) -> torch.Tensor:
    """What ``block(x, ipr)`` computes, for a channels_last (B, C, H, W) ``x``."""
    h, w = x.shape[-2:]
    tokens = attention_residual(block.attn, block.norm1, tokens_of(x), ipr, h, w)
    return image_of(feed_forward_residual(block.ffn, block.norm2, tokens, ipr, h, w), h, w)


TAIL_BAND_PIXELS = 8192  # LR pixels per band of the x4 tail: its largest activations are then 64 MB
TAIL_HALO = 2  # LR rows at a band edge that the zero padding of the tail's three 3x3 convs reaches


def sr_tail(tail: nn.Module, feat: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
    """``tail(feat) + upsampled`` for the x4 SR tail. Without autograd the tail runs on bands of rows
    (each with a halo of rows above and below) added in place into ``upsampled``, so that its 2x and
    4x resolution activations never exist for the whole image at once."""
    if torch.is_grad_enabled():
        return tail(feat) + upsampled
    height, width = feat.shape[-2:]
    rows = max(8, TAIL_BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        first, last = max(top - TAIL_HALO, 0), min(bottom + TAIL_HALO, height)
        band = tail(feat[:, :, first:last])
        upsampled[:, :, 4 * top:4 * bottom] += band[:, :, 4 * (top - first):4 * (bottom - first)]
    return upsampled
