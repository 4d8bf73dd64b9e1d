"""The fast path of the DIRformer: the function of its plain blocks (dirformer.py), computed with
less memory traffic from the same modules. It has no parameters of its own, so both paths share one
state dict; ``DIRformer(impl=...)`` picks the path.

* channels_last: the network runs in ``channels_last`` memory format, so (B, C, H, W) feature maps
  are (B, H*W, C) token matrices without copies: LayerNorm reduces over the contiguous channel axis
  and depthwise convolutions use their fast channels-last kernels.
* Folded modulation: the LayerNorm affine and the IPR scale/shift act per (sample, channel), so they
  fold into a per-sample copy of the following 1x1 conv (one batched GEMM, no pass over the tokens).
  Without autograd the GEMM's bias is a row of its weight, read through a column of ones.
* Attention: the C x C logits are normalised instead of q and k, and ``project_out`` folds into the
  attention map, so "attn @ v, project, add the residual" is one GEMM.
* Without autograd on the CPU, the blocks run on bands of rows that fit in its cache
  (:func:`projected_bands`; each row is projected once, the rows around a band that the 3x3
  depthwise convs read kept from the band before): the feed-forward band by band, the attention's
  q.k^T and norms summed over bands (only v is kept for every band). At 128x128 and larger this made
  inference 10-30% faster than streaming each wide activation through memory. The feed-forward's
  GELU and gate work in place, its output GEMM adds into the attention's output, and the attention's
  into the block's input where nothing reads it again (``overwrite``).
* The feed-forward's hidden width is zero-padded to a multiple of 16 (:data:`HIDDEN_MULTIPLE`):
  281 channels ran slower than 288.
* The x4 SR tail (three convs and two pixel-shuffles, no nonlinearity) is 5x5 convs at LR resolution
  (:func:`composite_tail`): one over the whole map, and one for each place on the border row and
  column, where the zero padding of the 2x and 4x convs cuts taps. About 1/18 of the three convs'
  FLOPs and no 2x or 4x activations. Composing the kernels takes 2.2 GFLOP (what the three convs
  take on about 19x19 LR pixels): once for eager inference (:func:`cached_composite_tail`), on every
  call with autograd or under torch.compile (where freezing makes them constants).
* The up/downsampling convs read small maps as NCHW (:func:`dense_if_weight_dwarfs`).

It matches the plain path to float rounding (about 1e-6 in float32, 1e-13 in float64).
``scaled_dot_product_attention`` is not used: its "sequence" here would be the channels (<= 512)
and its head dimension H*W, far beyond the 256 of the flash kernels; on the CPU it measured no
faster than the explicit products, and the explicit form is what lets the norms and
``project_out`` fold in.
"""
from __future__ import annotations

import itertools
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

F_NORMALIZE_EPS = 1e-12  # the norm floor of F.normalize, which the plain attention uses


def eager_inference() -> bool:
    """No autograd and not tracing for torch.compile (which fuses the passes itself): the ones-column
    GEMMs and row bands apply."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def dense_if_weight_dwarfs(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` as contiguous NCHW when ``conv``'s weight is over 4x the size of one sample of it, else ``x``.

    Given a channels_last input, oneDNN copies the NCHW weight to channels_last on every call: at the
    coarsest level (8x8 for a 64x64 input, 512 -> 1024 channels) that copy took twice as long as the
    conv (15.5 against 5.5 ms per call). A no-op for NCHW maps (the plain path's).
    """
    return x.contiguous() if conv.weight.numel() > 4 * x.shape[1:].numel() else x


def tokens_of(image: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C); a view when ``image`` is channels_last."""
    b, c, h, w = image.shape
    return image.permute(0, 2, 3, 1).reshape(b, h * w, c)


def image_of(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H*W, C) contiguous tokens -> a channels_last (B, C, H, W) view."""
    b, _, c = tokens.shape
    return tokens.view(b, h, w, c).permute(0, 3, 1, 2)


def normalize_tokens(norm: nn.Module, tokens: torch.Tensor, ones_column: bool = False) -> torch.Tensor:
    """A ChannelLayerNorm of (B, N, C) tokens without its gain and bias (those fold into the next
    1x1 conv, see :func:`folded_projections`). With ``ones_column`` (only in :func:`eager_inference`):
    (B, N, C + 1) with a last column of ones, so that the GEMM that follows adds its bias as a row of
    its weight instead of first copying the bias into every output row."""
    if not ones_column:
        if norm.subtract_mean:
            return F.layer_norm(tokens, tokens.shape[-1:], eps=norm.eps)
        return tokens * rstd_of_centred(centred(tokens), norm.eps)
    b, n, c = tokens.shape
    out = tokens.new_empty(b, n, c + 1)
    out[..., c] = 1
    normalized = out[..., :c]
    # the tokens minus their mean go into the block, then the normalised tokens replace them there:
    # F.layer_norm into a new tensor and a copy into the block took about twice as long (0.8 against
    # 0.4 ms on 4096 x 96 tokens). In float16 and bfloat16 this rounds twice (centred, then scaled)
    torch.sub(tokens, mean_of(tokens), out=normalized)
    rstd = rstd_of_centred(normalized, norm.eps)
    if norm.subtract_mean:
        normalized.mul_(rstd)
    else:  # BiasFree: divided by the std, not centred
        torch.mul(tokens, rstd, out=normalized)
    return out


def mean_of(tokens: torch.Tensor) -> torch.Tensor:
    """The mean over the channels, (B, N, 1), in at least float32 (as LayerNorm takes it)."""
    return tokens.mean(dim=-1, keepdim=True, dtype=torch.promote_types(tokens.dtype, torch.float32))


def centred(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` minus their mean over the channels. (Restormer's BiasFree LayerNorm divides by their
    std but does not centre its output.)"""
    return (tokens - mean_of(tokens)).to(tokens.dtype)


def rstd_of_centred(tokens: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / std over the channels of (B, N, C) :func:`centred` tokens, in their dtype."""
    # the norm is one fused pass over the tokens (squaring and then averaging would be two), taken in
    # at least float32: a float16 sum of squares overflows once the channels' RMS passes 256 / sqrt(C)
    norm = torch.linalg.vector_norm(at_least_float32(tokens), dim=-1, keepdim=True)
    return torch.rsqrt(norm.square() / tokens.shape[-1] + eps).to(tokens.dtype)


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
                       dwconv: nn.Conv2d, chunks: int, width_multiple: int = 1) -> list[tuple]:
    """The per-sample 1x1 conv of ``pointwise(modulate(.))`` and the depthwise conv after it, for each of
    ``chunks`` chunks of its output: (weight (B, C, out), bias (B, 1, out), depthwise weight, bias).
    In :func:`eager_inference` the bias is the weight's last row instead, (B, C + 1, out), and the bias
    entry is None (see :func:`normalize_tokens`). Each chunk is zero-padded to a multiple of
    ``width_multiple`` output channels.

    Each chunk (q, k, v; or the GELU branch and the gate) gets its own GEMM and depthwise conv, so
    that every chunk is a contiguous tensor: elementwise ops on a strided slice of one wide tensor
    are several times slower.
    """
    gain, shift = fold_modulation(norm, kernel, ipr)
    weight = pointwise.weight.flatten(1)  # (out, C)
    folded_bias = shift @ weight.t()  # (B, out)
    if pointwise.bias is not None:
        folded_bias = folded_bias + pointwise.bias
    per_sample = weight * gain.unsqueeze(1)  # (B, out, C)
    size = pointwise.out_channels // chunks
    extra = -size % width_multiple

    def split(t: torch.Tensor | None, dim: int) -> list[torch.Tensor | None]:
        """``t``'s chunks along ``dim``, each followed by ``extra`` zeros."""
        if t is None:
            return [None] * chunks
        # split rather than index: the backward of a split is one concatenation
        parts = t.split(size, dim)
        return [F.pad(part, [0, 0] * (t.dim() - 1 - dim) + [0, extra]) for part in parts] if extra else parts

    # in eager inference the bias is a last column of each output channel's row, for all chunks at once
    # (the ones column it needs is written with out=, which has no autograd and does not trace)
    if eager_inference():
        augmented = torch.cat([per_sample, folded_bias.unsqueeze(-1)], dim=2)
        matrices = [(part.transpose(1, 2), None) for part in split(augmented, 1)]
    else:
        matrices = [(part.transpose(1, 2), bias.unsqueeze(1))
                    for part, bias in zip(split(per_sample, 1), split(folded_bias, 1))]
    return [(part_weight, part_bias, dw_weight, dw_bias) for (part_weight, part_bias), dw_weight, dw_bias
            in zip(matrices, split(dwconv.weight, 0), split(dwconv.bias, 0))]


def project(tokens: torch.Tensor, norm: nn.Module, parts: list[tuple], h: int, w: int) -> list[torch.Tensor]:
    """``dwconv(pointwise(modulate(norm(tokens))))``, chunk by chunk, for (B, H*W, C) tokens and the
    ``parts`` of :func:`folded_projections`; weights that hold their bias as a last row (bias None)
    read the tokens with a column of ones."""
    if parts[0][1] is None:
        augmented = normalize_tokens(norm, tokens, ones_column=True)
        return [depthwise(torch.bmm(augmented, weight), dw_weight, dw_bias, h, w)
                for weight, _, dw_weight, dw_bias in parts]
    normalized = normalize_tokens(norm, tokens)
    return [depthwise(torch.baddbmm(bias, normalized, weight), dw_weight, dw_bias, h, w)
            for weight, bias, dw_weight, dw_bias in parts]


BAND_PIXELS = 4096  # pixels per band of rows without autograd: a band's activations stay in the CPU's cache


def rows_per_band(h: int, w: int, device: torch.device) -> int:
    """Rows per band of an ``h`` x ``w`` map on ``device`` in eager inference, ``h`` for the whole map in
    one band: off the CPU or when the map is small. On a GPU, bands only multiply the kernel launches:
    on an H200 the fast path ran at 0.58x plain at 64x64 LR (one band) but 0.12x and 0.11x at 128x128
    and 256x256, where its level-1 blocks ran 4 and 16 bands."""
    rows = max(4, BAND_PIXELS // w)
    return h if rows >= h or device.type != "cpu" else rows


def band_rows(tokens: torch.Tensor, h: int, w: int) -> int:
    """Rows per band of (B, H*W, C) tokens: :func:`rows_per_band` in :func:`eager_inference`, else ``h``
    (with autograd; and under torch.compile, which fuses the passes itself)."""
    return rows_per_band(h, w, tokens.device) if eager_inference() else h


def gemm_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """The dtype of ``a @ b`` (for out= ops, which autocast skips): their promotion, or the autocast
    dtype where autocast would cast them (it leaves float64 alone)."""
    dtype, device = torch.promote_types(a.dtype, b.dtype), a.device.type
    if torch.is_autocast_enabled(device) and dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return dtype


def projected_bands(tokens: torch.Tensor, norm: nn.Module, parts: list[tuple], h: int, w: int):
    """Yield ``(chunks, placed)``: what :func:`project` gives for the rows ``placed`` of (B, H*W, C)
    tokens, band by band (:func:`band_rows`), so that a band's activations stay in the cache.

    A band's depthwise convs read one row above and below it. Each chunk's GEMM output goes to a buffer
    of the band's rows plus those two: the GEMMs of a band compute the rows from its second (the first
    band: its first) to the one below it; the two above are the last two rows of the previous band's
    buffer (its last row and the row below it), moved to the buffer's top. So every row is projected
    once (recomputing the two rows measured 3-10% slower at 128x128 and 256x256), and no later band
    reads the token rows of a band yielded: the caller may overwrite them (the feed-forward adds into
    them in place).
    """
    rows = band_rows(tokens, h, w)
    if rows == h:
        yield project(tokens, norm, parts, h, w), slice(None)
        return
    b = tokens.shape[0]
    dtype = gemm_dtype(tokens, parts[0][0])
    weights = [weight.to(dtype) for weight, *_ in parts]
    # per chunk, (B, rows + 2, W, out): row j holds the projection of image row top - 1 + j
    buffers = [tokens.new_empty(b, rows + 2, w, weight.shape[-1], dtype=dtype) for weight in weights]
    for buffer in buffers:
        buffer[:, 0] = 0  # the zero padding above the image
    for top in range(0, h, rows):
        bottom = min(top + rows, h)
        first, last = (top + 1 if top else 0), min(bottom + 1, h)  # the image rows this band projects
        augmented = normalize_tokens(norm, tokens[:, first * w:last * w], ones_column=True).to(dtype)
        chunks = []
        for buffer, weight, (_, _, dw_weight, dw_bias) in zip(buffers, weights, parts):
            if top:
                buffer[:, :2] = buffer[:, rows:rows + 2]
            start = first - top + 1
            stop = start + last - first
            torch.bmm(augmented, weight, out=buffer[:, start:stop].view(b, -1, buffer.shape[-1]))
            if bottom == h:  # the zero padding below the image
                buffer[:, stop] = 0
            image = buffer[:, :bottom - top + 2].permute(0, 3, 1, 2)
            chunks.append(tokens_of(F.conv2d(image, dw_weight, dw_bias, padding=(0, 1), groups=image.shape[1])))
        yield chunks, slice(top * w, bottom * w)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def computes_in_float16(tokens: torch.Tensor) -> bool:
    """Whether the projections of ``tokens`` come out in float16 (float16 tokens, or float16 autocast)."""
    device = tokens.device.type
    return tokens.dtype == torch.float16 or (
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16)


def attention_residual(attn: nn.Module, norm: nn.Module, tokens: torch.Tensor, ipr: torch.Tensor, h: int,
                       w: int, overwrite: bool = False) -> torch.Tensor:
    """``tokens + DMTA(norm(tokens))`` for (B, H*W, C) tokens, the whole residual branch. With ``overwrite``
    (the caller no longer reads ``tokens``), in eager inference the branch is added into ``tokens`` in place.

    The C x C attention pools over all pixels: q.k^T and the norms of q and k are summed band by
    band (:func:`projected_bands`), and only v is kept for every band.
    """
    b, n, c = tokens.shape
    heads, head_channels = attn.num_heads, c // attn.num_heads
    parts = folded_projections(norm, attn.kernel, ipr, attn.qkv, attn.qkv_dwconv, 3)
    if computes_in_float16(tokens):  # q.k and q*q can overflow float16: normalise first, as the plain path does
        q, k, v = project(tokens, norm, parts, h, w)
        q_heads, k_heads = (t.view(b, n, heads, head_channels).permute(0, 2, 3, 1) for t in (q, k))
        logits = F.normalize(q_heads, dim=-1) @ F.normalize(k_heads, dim=-1).transpose(-2, -1) * attn.temperature
        values = [(v, slice(None))]
    else:  # normalising the C x C product instead of q and k saves two passes over them
        products, squares, values = 0, 0, []
        for (q, k, v), placed in projected_bands(tokens, norm, parts, h, w):
            # (B, heads, head_channels, pixels) views that matmul reads as transposed matrices
            q_heads, k_heads = (t.view(b, -1, heads, head_channels).permute(0, 2, 3, 1) for t in (q, k))
            # summed in at least float32: under bf16 autocast, one rounding per band would add up
            products = products + at_least_float32(q_heads @ k_heads.transpose(-2, -1))
            squares = squares + at_least_float32(torch.stack([q.square().sum(dim=1), k.square().sum(dim=1)]))
            values.append((v, placed))
            del q, k, q_heads, k_heads  # freed before the next band's are made, which can reuse their memory
        dtype = values[0][0].dtype
        products, squares = products.to(dtype), squares.to(dtype)  # rounded once, back to the compute dtype
        q_norm, k_norm = squares.sqrt().clamp_min(F_NORMALIZE_EPS).view(2, b, heads, head_channels, 1)
        logits = products * (attn.temperature / q_norm) / k_norm.transpose(-2, -1)
    attention = logits.softmax(dim=-1)
    # project_out(attn @ v) = v @ (W_out . blockdiag(attn))^T: one GEMM over the pixels, plus the residual
    w_out = attn.project_out.weight.view(c, heads, head_channels).transpose(0, 1)  # (heads, C, head_channels)
    mix_t = (w_out @ attention).transpose(1, 2).reshape(b, c, c).transpose(1, 2)
    bias = attn.project_out.bias
    if overwrite and eager_inference() and tokens.dtype == mix_t.dtype and tokens.is_contiguous():
        # no new output and no copy of the residual into it: at 256x256 a fresh (H*W, C) output per block
        # was page-faulted in most times (deblurring: about 40k page faults per forward, 30k in place).
        # Not into a transposed view (an NCHW input's tokens): the output would come out NCHW
        for v, placed in values:
            rows = tokens[:, placed]
            if bias is not None:
                rows.add_(bias)
            rows.baddbmm_(v, mix_t)
        return tokens
    if len(values) == 1:
        return torch.baddbmm(tokens if bias is None else tokens + bias, values[0][0], mix_t)
    # row bands: each band's product goes straight into its rows of the output, with no concatenation
    # of the bands' v. out= is not autocast: under autocast v and mix_t have the autocast dtype, the
    # residual can be float32 (a float32 bias added)
    out = tokens.new_empty(tokens.shape, dtype=values[0][0].dtype)
    for v, placed in values:
        residual = tokens[:, placed] if bias is None else tokens[:, placed] + bias
        torch.baddbmm(residual.to(out.dtype), v, mix_t, out=out[:, placed])
    return out


# The feed-forward's hidden width is zero-padded to a multiple of this. The official width is
# int(C * 2.2), 281 for C = 128: a (4096 x 129) @ (129 x 281) GEMM ran at 128 GFLOP/s against 158 at
# 288 columns, and its depthwise conv took 0.66 ms against 0.57. The zero channels stay zero
# (gelu(0) * 0) and add nothing.
HIDDEN_MULTIPLE = 16


def feed_forward_residual(ffn: nn.Module, norm: nn.Module, tokens: torch.Tensor, ipr: torch.Tensor, h: int,
                          w: int) -> torch.Tensor:
    """``tokens + DGFN(norm(tokens))`` for (B, H*W, C) tokens, the whole residual branch. In eager
    inference it adds into ``tokens`` in place (the blocks pass the attention's output), band by band
    (:func:`projected_bands`): the wide hidden activations of a band stay in the cache."""
    b, _, c = tokens.shape
    parts = folded_projections(norm, ffn.kernel, ipr, ffn.project_in, ffn.dwconv, 2, HIDDEN_MULTIPLE)
    out_weight = ffn.project_out.weight.flatten(1)  # (C, hidden), zero columns added for the padded channels
    out_weight = F.pad(out_weight, [0, parts[0][2].shape[0] - out_weight.shape[1]]).t()
    if not eager_inference():
        x1, x2 = project(tokens, norm, parts, h, w)
        gated = (F.gelu(x1) * x2).reshape(-1, out_weight.shape[0])
        residual = tokens if ffn.project_out.bias is None else tokens + ffn.project_out.bias
        # one GEMM over all pixels of the batch, the residual added by it
        return torch.addmm(residual.reshape(-1, c), gated, out_weight).view(b, -1, c)

    # in-place ops are not autocast: the attention's output, and so the rows, already have the GEMM dtype
    out_weight = out_weight.to(tokens.dtype)

    def add_to_rows(gated: torch.Tensor, placed: slice) -> None:
        """A GEMM accumulating into the rows, no copy of them: one, or one per sample where the rows of
        a band are strided across the batch."""
        rows = tokens[:, placed]
        if ffn.project_out.bias is not None:
            rows.add_(ffn.project_out.bias)
        if rows.is_contiguous():
            rows.view(-1, c).addmm_(gated.reshape(-1, gated.shape[-1]), out_weight)
        else:
            for sample_rows, sample_gated in zip(rows, gated):
                sample_rows.addmm_(sample_gated, out_weight)

    for (x1, x2), placed in projected_bands(tokens, norm, parts, h, w):
        # in place: GELU into a fresh tensor measured twice as slow
        add_to_rows(torch.ops.aten.gelu_(x1).mul_(x2), placed)
        del x1, x2  # freed before the next band's are made, which can reuse their memory
    return tokens


def transformer_block(block: nn.Module, x: torch.Tensor, ipr: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """What ``block(x, ipr)`` computes, for a channels_last (B, C, H, W) ``x``; with ``overwrite`` (the caller
    no longer reads ``x``), in eager inference into ``x``'s memory."""
    h, w = x.shape[-2:]
    tokens = attention_residual(block.attn, block.norm1, tokens_of(x), ipr, h, w, overwrite)
    return image_of(feed_forward_residual(block.ffn, block.norm2, tokens, ipr, h, w), h, w)


# --------------------------------------------------------------------------- the x4 SR tail
# The tail (conv3x3 C->4C, pixel-shuffle, conv3x3 C->4C, pixel-shuffle, conv3x3 C->out) has no
# nonlinearity, so it is a linear map of the LR features: a 5x5 conv at LR resolution from C channels to
# out*16 sub-pixels, then a pixel-shuffle by 4 (for the official C=128, 1/20 of the three convs' FLOPs,
# which were a third of the network's). The zero padding of the 2x and 4x convs makes the outermost LR
# row and column different maps, but each is again a 5x5 conv: one kernel for each of the 9 places of
# an LR pixel (first row, inner rows or last row, times the same for columns), composed once.

BORDERS = ("first", "inner", "last")  # where an LR row (or column) lies: at the first border, inside, at the last


def tail_convs(tail: nn.Module) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
    """The upsampling convs at 1x and 2x and the output conv at 4x of :func:`dirformer.x4_upsampler_tail`."""
    return tail[0][0], tail[0][2], tail[1]


def polyphase(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 or 5x5 conv at a fine grid as a 3x3 conv at the grid twice as coarse.

    Fine maps are read through their pixel-unshuffle by 2 (channel ``c*4 + i*2 + j`` holds sub-pixel
    (i, j)), as ``pixel_shuffle`` writes them. Output (o, a, b) at coarse offset (ky, kx) from input
    (c, i, j) is the fine tap ``(2*(ky-1) + i - a, 2*(kx-1) + j - b)``: (O, C, k, k) -> (4O, 4C, 3, 3).
    """
    out_ch, in_ch, size, _ = weight.shape
    padded = F.pad(weight, [3 - size // 2] * 4)  # 7x7, centred: fine tap t is index t + 3
    # strided[s][t] = padded[..., 2*ky + s, 2*kx + t] over (ky, kx): views (unbound, their gradient is one stack)
    strided = [shifted.unbind(2) for shifted in padded.unfold(2, 5, 1)[..., ::2].unfold(3, 5, 1)[..., ::2].unbind(2)]
    taps = torch.stack([strided[i - a + 1][j - b + 1] for a, b, i, j in itertools.product((0, 1), repeat=4)], 1)
    taps = taps.view(out_ch, 2, 2, 2, 2, in_ch, 3, 3)  # (O, a, b, i, j, C, ky, kx)
    return taps.permute(0, 1, 2, 5, 3, 4, 6, 7).reshape(4 * out_ch, 4 * in_ch, 3, 3)


def inside_taps(row_border: str, col_border: str, like: torch.Tensor) -> torch.Tensor:
    """(9,), dtype and device of ``like``: 1 for the taps ``3*ky + kx`` of a 3x3 conv that read inside the
    image from a pixel at ``row_border`` and ``col_border`` (:data:`BORDERS`), 0 for those that read the
    zero padding."""
    taps = like.new_ones(3, 3)
    if row_border != "inner":
        taps[0 if row_border == "first" else 2] = 0
    if col_border != "inner":
        taps[:, 0 if col_border == "first" else 2] = 0
    return taps.flatten()


def tap_products(outer: torch.Tensor, inner: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each of the 9 taps of ``outer`` (O, M, 3, 3) applied to the kernel ``inner`` (M, C, 3, 3), channels
    last: 9 (O, 3, 3, C). ``inner`` in channels_last memory format is read without a copy."""
    out_ch, mid = outer.shape[:2]
    products = outer.permute(0, 2, 3, 1).reshape(-1, mid) @ inner.permute(0, 2, 3, 1).reshape(mid, -1)
    return products.view(out_ch, 9, 3, 3, -1).unbind(1)  # unbound: their gradient is one stack


def composed_kernels(products: tuple[torch.Tensor, ...], index: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """5x5 kernels of ``conv(conv(x, inner), outer)``, channels last, from the :func:`tap_products` of
    ``outer``'s channels ``index`` (any shape) and with only the taps of ``outer`` that ``taps`` (..., 9)
    marks: (*broadcast shape, 5, 5, C). Each tap's product is added at its offset."""
    shape = torch.broadcast_shapes(index.shape, taps.shape[:-1])
    composed = products[0].new_zeros(*shape, 5, 5, products[0].shape[-1])
    for tap, product in enumerate(products):
        ky, kx = divmod(tap, 3)
        composed[..., ky:ky + 3, kx:kx + 3, :].addcmul_(product[index], taps[..., tap, None, None, None])
    return composed


def border_of_half(border: str, half: int) -> str:
    """Where the upper (0) or lower (1) 2x row of an LR row at ``border`` lies (columns alike)."""
    return border if (border, half) in (("first", 0), ("last", 1)) else "inner"


def composite_tail(tail: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The x4 tail as 5x5 convs at LR resolution, output channels ordered for ``pixel_shuffle(., 4)``:
    kernels (3, 3, 16*out, C, 5, 5) and biases (3, 3, 16*out), indexed by the :data:`BORDERS` of the
    LR row and column they compute ([1, 1]: away from the border).

    At a border each conv drops its taps that would read the zero padding of its input: the 4x conv,
    as a conv on the 2x grid, those of a 2x pixel at the border; the 2x conv, as a conv on the LR grid,
    those of an LR pixel at the border. Composed in at least float32 (autocast off), so that bfloat16
    autocast rounds the composite kernels once, not three kernels and two activations."""
    up1, up2, last = tail_convs(tail)
    device = up1.weight.device
    places = list(itertools.product(BORDERS, BORDERS))  # the (row, col) borders of a pixel, 9 places
    # sub-pixel (a, b) of an LR pixel at (row, col) is a 2x pixel at (border_of_half(row, a),
    # border_of_half(col, b)): for each place, the index of its 4 sub-pixels' kernels among the 36
    # (2x place, sub-pixel) phases below; 16 of them occur, and up1 is composed into each once
    phase_of = [[4 * places.index((border_of_half(row, a), border_of_half(col, b))) + 2 * a + b
                 for a, b in itertools.product((0, 1), repeat=2)] for row, col in places]
    used = sorted(set(itertools.chain(*phase_of)))
    used_phases = torch.tensor(used, device=device)
    used_of_place = torch.tensor([[used.index(phase) for phase in phases] for phases in phase_of], device=device)
    with torch.autocast(device.type, enabled=False):
        w1, w2, w3 = (at_least_float32(conv.weight) for conv in (up1, up2, last))
        b1, b2, b3 = (at_least_float32(conv.bias) for conv in (up1, up2, last))
        w1, w2 = (w.contiguous(memory_format=torch.channels_last) for w in (w1, w2))  # for tap_products
        out_ch = w3.shape[0]
        taps = torch.stack([inside_taps(*place, w1) for place in places])  # (9 places, 9 taps)
        # up2, shuffle and the 4x conv: a 5x5 conv at 2x for each place of a 2x pixel, (9, 4*out, C, 5, 5)
        last_at_2x = polyphase(w3)  # the 4x conv as a conv on the 2x grid: (4*out, 4C, 3, 3)
        channels_2x = torch.arange(4 * out_ch, device=device)
        at_2x = composed_kernels(tap_products(last_at_2x, w2), channels_2x, taps.unsqueeze(1)).movedim(-1, 2)
        biases_2x = b3.repeat_interleave(4) + taps @ (last_at_2x.flatten(2).transpose(1, 2) @ b2).t()
        # as convs on the LR grid, one for each (2x place, sub-pixel (a, b)): (36, 4*out, 4C, 3, 3)
        phases = polyphase(at_2x.flatten(0, 1)).unflatten(0, (9, 4 * out_ch, 4)).transpose(1, 2).flatten(0, 1)
        at_1x = phases[used_phases].flatten(0, 1)  # the used ones' channels, (16 * 4*out, 4C, 3, 3)
        # and up1: for each place of an LR pixel, its 4 sub-pixels' kernels with its taps, (9, 4, 4*out, 5, 5, C)
        channels_1x = used_of_place.unsqueeze(-1) * 4 * out_ch + channels_2x  # (9, 4, 4*out)
        kernels = composed_kernels(tap_products(at_1x, w1), channels_1x, taps.view(9, 1, 1, 9))
        tap_biases = at_1x.flatten(2).transpose(1, 2) @ b1  # (16 * 4*out, 9 taps): each tap's share of up1's bias
        biases = biases_2x[used_phases // 4][used_of_place] + (tap_biases[channels_1x] * taps.view(9, 1, 1, 9)).sum(-1)
    # channels (o, 4x sub-pixel i', j', 2x sub-pixel i, j) -> (o, 2i + i', 2j + j') of one shuffle by 4
    order = torch.arange(16 * out_ch, device=device).view(out_ch, 2, 2, 2, 2).permute(0, 3, 1, 4, 2).flatten()
    kernels = kernels.transpose(1, 2).flatten(1, 2)[:, order].movedim(-1, 2).contiguous()
    biases = biases.transpose(1, 2).flatten(1)[:, order]
    return kernels.unflatten(0, (3, 3)), biases.unflatten(0, (3, 3))


# tail module -> (copies of the six tensors composed, composite_tail's result)
_COMPOSED_TAILS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_composite_tail(tail: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`composite_tail`, composed once for eager inference and reused while the tail's weights and
    biases equal the copies kept of them (compared by value: an EMA update through ``.data``, a fused
    optimizer step or a cast changes them without bumping a tensor's version). Composing the official
    tail's kernels took 32 ms (a x4 SR forward at 64x64 takes 0.6 s), comparing them about 1 ms."""
    if not eager_inference():
        return composite_tail(tail)
    tensors = [t for conv in tail_convs(tail) for t in (conv.weight, conv.bias)]
    cached = _COMPOSED_TAILS.get(tail)
    if cached is not None and all(t.device == c.device and t.dtype == c.dtype and t.shape == c.shape
                                  and torch.equal(t, c) for t, c in zip(tensors, cached[0])):
        return cached[1]
    composed = composite_tail(tail)
    _COMPOSED_TAILS[tail] = ([t.detach().clone() for t in tensors], composed)
    return composed


def border_spans(size: int) -> list[slice]:
    """The LR rows (or columns) of each of the :data:`BORDERS`; the inner span is empty for 2 rows."""
    return [slice(0, 1), slice(1, size - 1), slice(size - 1, size)]


def with_zeros_around(feat: torch.Tensor, rows: slice, cols: slice, margin: int) -> torch.Tensor:
    """``feat[..., rows, cols]`` widened by ``margin`` rows and columns each side, zeros outside ``feat``."""
    h, w = feat.shape[-2:]
    top, bottom = rows.start - margin, rows.stop + margin
    left, right = cols.start - margin, cols.stop + margin
    window = feat[..., max(top, 0):min(bottom, h), max(left, 0):min(right, w)]
    return F.pad(window, [max(-left, 0), max(right - w, 0), max(-top, 0), max(bottom - h, 0)])


def x4_tail(tail: nn.Module, feat: torch.Tensor) -> torch.Tensor:
    """``tail(feat)`` for the x4 SR tail, through the 5x5 convs of :func:`composite_tail`: one over the whole
    map, then for each place on the border row and column its own, over the window of ``feat`` it reads."""
    h, w = feat.shape[-2:]
    if min(h, w) < 2:  # a row at both borders: no kernel for it
        return tail(feat)
    kernels, biases = cached_composite_tail(tail)
    kernels, biases = kernels.to(feat.dtype), biases.to(feat.dtype)
    out = F.pixel_shuffle(F.conv2d(feat, kernels[1, 1], biases[1, 1], padding=2), 4)
    for r, rows in enumerate(border_spans(h)):
        for c, cols in enumerate(border_spans(w)):
            if (r, c) == (1, 1) or rows.start == rows.stop or cols.start == cols.stop:
                continue
            part = F.conv2d(with_zeros_around(feat, rows, cols, 2), kernels[r, c], biases[r, c])
            out[..., 4 * rows.start:4 * rows.stop, 4 * cols.start:4 * cols.stop] = F.pixel_shuffle(part, 4)
    return out


def sr_tail(tail: nn.Module, feat: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
    """``tail(feat) + upsampled`` through :func:`x4_tail`. Without autograd it adds in place into
    ``upsampled``."""
    out = x4_tail(tail, feat)
    return out + upsampled if torch.is_grad_enabled() else upsampled.add_(out)
