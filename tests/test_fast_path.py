"""The fast DIRformer path against the plain reference path, activation checkpointing, autocast, compile."""
import os

import pytest
import torch

from diffir import DiffIRS1, DiffIRS2
from diffir.archs import dirformer_fast
from diffir.archs.dirformer import (ChannelLayerNorm, DIRformer, Downsample, IPRSequential, Upsample, plain_block,
                                    x4_upsampler_tail)
from diffir.utils.compile import compile_arguments, compile_network, graph_cache_dir
from official_fixture import load_fixture, materialize

# Tiny versions of every task head; two blocks on levels with several heads and bias=True somewhere,
# so that each code path of the fast blocks (heads > 1, conv biases, both LayerNorm kinds) runs.
VARIANTS = {
    "sr_x4": dict(head="sr", scale=4, LayerNorm_type="BiasFree", ffn_expansion_factor=2.2, size=16),
    "sr_x2": dict(head="sr", scale=2, LayerNorm_type="BiasFree", ffn_expansion_factor=2.2, size=16),
    "sr_x1": dict(head="sr", scale=1, LayerNorm_type="WithBias", ffn_expansion_factor=2.2, size=32),
    "deblur": dict(head="restore", LayerNorm_type="WithBias", ffn_expansion_factor=2.0, bias=True, size=16),
    "inpaint": dict(head="inpaint", inp_channels=4, LayerNorm_type="WithBias", ffn_expansion_factor=1.8,
                    num_refinement_blocks=0, size=16),
    "inpaint_dual_pixel": dict(head="inpaint", inp_channels=4, LayerNorm_type="WithBias", ffn_expansion_factor=1.8,
                               num_refinement_blocks=0, dual_pixel_task=True, bias=True, size=16),
}


def tiny_dirformer(variant: str, **overrides) -> tuple[DIRformer, torch.Tensor, torch.Tensor]:
    """A tiny DIRformer of ``variant`` whose 1-D parameters (LayerNorm gains and biases, temperatures,
    conv biases) are randomised too, with an input batch of 2 and an IPR."""
    options = dict(VARIANTS[variant])
    size = options.pop("size")
    options = {"dim": 8, "num_blocks": (1, 2, 1, 2), "num_refinement_blocks": 1, **options, **overrides}
    torch.manual_seed(0)
    net = DIRformer(**options)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("temperature") or (p.dim() == 1 and name.endswith("weight")):
                p.copy_(1 + 0.5 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.2 * torch.randn_like(p))
    x = torch.rand(2, options.get("inp_channels", 3), size, size)
    ipr = torch.randn(2, 256)
    return net, x, ipr


def run(net: DIRformer, impl: str, x: torch.Tensor, ipr: torch.Tensor):
    """Output and the gradient of every parameter (and of the input) for a fixed scalar loss."""
    net.impl = impl
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = net(x, ipr)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


def assert_close_grads(a: dict, b: dict, rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = a[name].abs().max().item()
        assert (a[name] - b[name]).abs().max().item() <= rtol * max(scale, 1.0), name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fast_matches_plain_output_and_gradients(variant, mode):
    net, x, ipr = tiny_dirformer(variant)
    net.train(mode == "train")
    out_plain, grads_plain = run(net, "plain", x, ipr)
    out_fast, grads_fast = run(net, "fast", x, ipr)
    assert out_fast.shape == out_plain.shape
    assert out_fast.is_contiguous()
    assert out_plain.abs().max() > 0.1  # a real signal, not a vanishing one
    assert (out_fast - out_plain).abs().max().item() <= 1e-4
    assert_close_grads(grads_plain, grads_fast, rtol=1e-4)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_matches_plain_without_autograd(variant, monkeypatch):
    """Without autograd the fast path takes its inference forms (the bias as a weight row, GELU and
    gate in place, hidden widths padded to a multiple of 16: from 17 and 14 on level 1 here)."""
    net, x, ipr = tiny_dirformer(variant)
    net.eval()
    widths = []

    def recording(norm, kernel, ipr, pointwise, dwconv, chunks, *multiple):
        parts = folded_projections(norm, kernel, ipr, pointwise, dwconv, chunks, *multiple)
        if chunks == 2:  # a feed-forward: its hidden width and the width it ran at
            widths.append((pointwise.out_channels // 2, parts[0][0].shape[-1]))
        return parts

    folded_projections = dirformer_fast.folded_projections
    monkeypatch.setattr(dirformer_fast, "folded_projections", recording)
    given = x.contiguous(memory_format=torch.channels_last)  # read as it is: no copy to protect it
    with torch.inference_mode():
        net.impl = "plain"
        ref = net(x, ipr)
        net.impl = "fast"
        out = net(given, ipr)
    assert torch.equal(given, x)  # the levels overwrite only the network's own tensors
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= 1e-5
    assert widths and all(width == 16 * -(-hidden // 16) for hidden, width in widths)
    assert any(hidden % 16 for hidden, _ in widths) == (variant != "deblur")  # deblur's widths need none


@pytest.mark.parametrize("grad", [False, True])
def test_projection_chunks_are_zero_padded_to_the_width_multiple(grad):
    """Each chunk of a folded projection (weight, bias, depthwise weight and bias) gets zero channels
    up to the multiple and is otherwise unchanged."""
    net, _, ipr = tiny_dirformer("deblur")  # bias=True: the conv biases are padded too
    block = net.encoder_level1[0]
    ffn = block.ffn
    hidden = ffn.project_out.in_channels
    with torch.set_grad_enabled(grad):
        padded = dirformer_fast.folded_projections(block.norm2, ffn.kernel, ipr, ffn.project_in, ffn.dwconv, 2, 24)
        plain = dirformer_fast.folded_projections(block.norm2, ffn.kernel, ipr, ffn.project_in, ffn.dwconv, 2)
    assert hidden == 16 and len(padded) == 2
    for chunk, reference in zip(padded, plain):
        for t, ref, dim in zip(chunk, reference, (-1, -1, 0, 0)):
            if ref is None:  # the bias of a weight with a ones-column row (without autograd)
                assert t is None and not grad
                continue
            assert t.shape[dim] == 24
            assert torch.equal(t.narrow(dim, 0, hidden), ref)
            assert not t.narrow(dim, hidden, 24 - hidden).any()


def test_fast_matches_plain_for_channels_last_input_and_batch_of_one():
    net, x, ipr = tiny_dirformer("deblur")
    net.eval()
    with torch.no_grad():
        net.impl = "plain"
        ref = net(x[:1], ipr[:1])
        net.impl = "fast"
        out = net(x[:1].contiguous(memory_format=torch.channels_last), ipr[:1])
    assert (out - ref).abs().max().item() <= 1e-4


def random_tail(channels: int, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(3)
    tail = x4_upsampler_tail(channels, 3).to(dtype)
    with torch.no_grad():
        for p in tail.parameters():
            p.normal_(0, 0.2)
    return tail


@pytest.mark.parametrize("size", [(8, 8), (8, 12), (16, 8), (3, 5), (2, 6), (2, 2), (1, 5)])
@pytest.mark.parametrize("grad", [False, True])
def test_sr_tail_equals_the_three_convs(size, grad):
    """The composite 5x5 convs, inside and at the border, give the three convs' output to float64
    rounding, and the same gradients (2 rows have no inner row; in 1 row, the first is also the last)."""
    tail = random_tail(6)
    feat = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=grad)
    upsampled = torch.randn(2, 3, 4 * size[0], 4 * size[1], dtype=torch.float64)
    weights = torch.randn_like(upsampled)
    with torch.set_grad_enabled(grad):
        ref = tail(feat) + upsampled
        out = dirformer_fast.sr_tail(tail, feat, upsampled.clone())
    assert out.shape == ref.shape and out.stride() == ref.stride()  # the plain layout, as the plain path gives
    assert (out - ref).abs().max().item() < 1e-12
    if grad:
        params = [*tail.parameters(), feat]
        ref_grads = torch.autograd.grad((ref * weights).sum(), params)
        grads = torch.autograd.grad((out * weights).sum(), params)
        for a, b in zip(ref_grads, grads):
            assert (a - b).abs().max().item() < 1e-10


def test_composite_tail_has_a_kernel_for_each_place_at_the_border():
    """Each of the 9 composite kernels, run over the whole map, gives the three convs' output on its own
    rows and columns (float64: equal to rounding); the inner kernel is wrong on the border, where the
    zero padding of the 2x and 4x convs cuts taps, and the border kernels inside."""
    tail = random_tail(4)
    feat = torch.randn(1, 4, 10, 9, dtype=torch.float64)
    with torch.no_grad():
        kernels, biases = dirformer_fast.composite_tail(tail)
        ref = tail(feat)
    assert kernels.shape == (3, 3, 48, 4, 5, 5) and biases.shape == (3, 3, 48)
    spans = [slice(0, 4), slice(4, -4), slice(-4, None)]  # the output rows of the first, inner and last LR rows
    for r, rows in enumerate(spans):
        for c, cols in enumerate(spans):
            out = torch.nn.functional.pixel_shuffle(
                torch.nn.functional.conv2d(feat, kernels[r, c], biases[r, c], padding=2), 4)
            diff = (out - ref).abs()
            assert diff[..., rows, cols].max().item() < 1e-12, (r, c)
            others = [diff[..., other_rows, other_cols].max().item() for i, other_rows in enumerate(spans)
                      for j, other_cols in enumerate(spans) if (i, j) != (r, c) and (i == r or j == c)]
            assert min(others) > 1e-3, (r, c)


def test_composite_tail_is_cached_for_inference_until_the_weights_change():
    tail = random_tail(4, torch.float32)
    feat = torch.rand(1, 4, 6, 6)

    def three_convs_and_composite(grad: bool):
        x = feat.to(tail[1].weight.dtype)
        with torch.set_grad_enabled(grad):
            return tail(x), dirformer_fast.x4_tail(tail, x), dirformer_fast.cached_composite_tail(tail)

    _, _, first = three_convs_and_composite(grad=False)
    assert three_convs_and_composite(grad=False)[2] is first  # composed once
    _, _, with_grad = three_convs_and_composite(grad=True)
    assert with_grad is not first and with_grad[0].requires_grad  # autograd composes afresh
    with torch.no_grad():
        tail[1].weight.mul_(-2)  # an in-place change (an optimizer step, a load)
    ref, out, changed = three_convs_and_composite(grad=False)
    assert changed is not first and (out - ref).abs().max().item() <= 1e-5
    tail[0][0].bias = torch.nn.Parameter(torch.randn(16))  # a replaced parameter
    ref, out, replaced = three_convs_and_composite(grad=False)
    assert replaced is not changed and (out - ref).abs().max().item() <= 1e-5
    tail[0][2].weight.data.mul_(0.5)  # as basicsr's EMA updates its copy: no version bump
    ref, out, _ = three_convs_and_composite(grad=False)
    assert (out - ref).abs().max().item() <= 1e-5
    tail.double()  # a cast (Module._apply assigns .data)
    ref, out, _ = three_convs_and_composite(grad=False)
    assert out.dtype == torch.float64 and (out - ref).abs().max().item() <= 1e-12


def test_composite_tail_is_composed_in_float32_under_autocast():
    """Under bfloat16 autocast the composite kernels are composed in float32 (then rounded once, by
    the convs that use them), and the tail stays within bfloat16 rounding of the float32 one."""
    tail = random_tail(8, torch.float32)
    feat = torch.randn(1, 8, 8, 8)
    upsampled = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        ref = tail(feat)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kernels, _ = dirformer_fast.composite_tail(tail)
            fast = dirformer_fast.sr_tail(tail, feat, upsampled.clone())
    assert kernels.dtype == torch.float32
    assert (fast.float() - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("variant", ["sr_x4", "deblur", "inpaint_dual_pixel"])
@pytest.mark.parametrize("band_pixels, level_bands", [(88, ((5, 5, 5, 5, 4), (11, 1))), (64, ((4,) * 6, (8, 4)))])
def test_blocks_in_row_bands_match_the_plain_path(variant, band_pixels, level_bands, monkeypatch):
    """Without autograd the fast path runs attention and feed-forward on bands of rows, each band's
    depthwise convs reading the rows around it from the band before: the seams must be exact and q.k^T
    summed over the bands (also with conv biases and a padded hidden width, inpaint_dual_pixel). The
    bands of the 24 x 16 level 1 and the 12 x 8 level 2: ``level_bands``, a last band of 1 row among
    them. Also in float64 under bf16 autocast, which leaves float64 alone."""
    net, _, ipr = tiny_dirformer(variant)
    x = torch.rand(2, VARIANTS[variant].get("inp_channels", 3), 24, 16)
    monkeypatch.setattr(dirformer_fast, "BAND_PIXELS", band_pixels)
    net.eval()
    with torch.no_grad():
        for (h, w), bands in zip([(24, 16), (12, 8)], level_bands):
            assert dirformer_fast.band_rows(torch.zeros(1, h * w, 4), h, w) == bands[0]
        # off the CPU (here the meta device, which stands in for a GPU) bands are only more launches
        assert dirformer_fast.band_rows(torch.zeros(1, 24 * 16, 4, device="meta"), 24, 16) == 24
        for dtype, tolerance in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
            net.to(dtype)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.float64):
                net.impl = "plain"
                ref = net(x.to(dtype), ipr.to(dtype))
                net.impl = "fast"
                out = net(x.to(dtype), ipr.to(dtype))
            assert out.dtype == dtype and (out - ref).abs().max().item() <= tolerance


@pytest.mark.parametrize("band_pixels", [dirformer_fast.BAND_PIXELS, 64])  # one band, and 4 bands of 4 rows
def test_blocks_overwrite_only_what_they_are_given(band_pixels, monkeypatch):
    """In eager inference a block adds its attention into its input's memory when told that nothing reads
    the input again; a level tells all its blocks but the first (which gets the level's input). An NCHW
    input is never overwritten: its tokens are a transposed view, and the output comes out channels_last
    as from any other input."""
    monkeypatch.setattr(dirformer_fast, "BAND_PIXELS", band_pixels)
    net, _, ipr = tiny_dirformer("deblur")  # bias=True: the attention's output bias is added in place too
    net.eval()
    level = net.encoder_level2  # two blocks
    x = torch.rand(2, level[0].norm1.body.weight.numel(), 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = plain_block(level[0], x, ipr)
        kept = x.clone()
        out = dirformer_fast.transformer_block(level[0], kept, ipr)
        overwritten = x.clone()
        out_overwriting = dirformer_fast.transformer_block(level[0], overwritten, ipr, overwrite=True)
        nchw = x.contiguous()
        out_nchw = dirformer_fast.transformer_block(level[0], nchw, ipr, overwrite=True)
        net.impl = "fast"
        flags = []

        def recording_block(block, x, ipr, overwrite):
            flags.append(overwrite)
            return dirformer_fast.transformer_block(block, x, ipr, overwrite)

        level.run_block = recording_block
        level_ref, level_input = level[1](level[0](x, ipr), ipr), x.clone()
        level_out = level(level_input, ipr)
    for result in (out, out_overwriting, out_nchw):
        assert (result - ref).abs().max().item() <= 1e-5
        assert result.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(kept, x) and torch.equal(nchw, x)
    assert out_overwriting.data_ptr() == overwritten.data_ptr() and out.data_ptr() != kept.data_ptr()
    assert flags == [False, True] and torch.equal(level_input, x)
    assert (level_out - level_ref).abs().max().item() <= 1e-5


def test_fast_path_leaves_what_forward_hooks_hold_unchanged():
    """Tensors that modules return, or levels receive, can be held by forward hooks: the fast path's in-place
    work must not change them after the fact."""
    net, x, ipr = tiny_dirformer("sr_x4")
    net.eval()
    net.impl = "fast"
    held = []
    for module in net.modules():
        if module is not net:
            module.register_forward_hook(lambda m, args, out: held.append((out, out.clone())))
            module.register_forward_pre_hook(lambda m, args: held.extend((a, a.clone()) for a in args[:1]))
    with torch.inference_mode():
        net(x.contiguous(memory_format=torch.channels_last), ipr)
    assert len(held) > 20 and all(torch.equal(tensor, copy) for tensor, copy in held)


def test_resampling_convs_read_small_maps_as_nchw():
    """The up/downsampling convs take a channels_last map as NCHW where their weight dwarfs it (oneDNN would
    copy the weight to channels_last every call), and keep channels_last elsewhere; same values."""
    conv = torch.nn.Conv2d(64, 128, 3, padding=1, bias=False)  # 73728 weights
    small = torch.rand(2, 64, 8, 8).contiguous(memory_format=torch.channels_last)  # 4096 values a sample
    large = torch.rand(2, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    dense = dirformer_fast.dense_if_weight_dwarfs(conv, small)
    assert dense.is_contiguous() and torch.equal(dense, small)
    assert dirformer_fast.dense_if_weight_dwarfs(conv, large) is large
    for resample in (Upsample(64), Downsample(64)):  # both use it: the small map's result comes out NCHW
        assert resample(small).is_contiguous() and not resample(large).is_contiguous()


def test_auto_composes_the_x4_tail_under_compile_on_a_gpu(monkeypatch):
    """On a GPU 'auto' runs the plain blocks; traced by torch.compile (simulated here) it also takes the
    composite x4 tail, which gives the three convs' output to rounding."""
    net, x, ipr = tiny_dirformer("sr_x4")
    monkeypatch.setattr(net, "resolve_impl", lambda device: "plain")  # what 'auto' resolves to on a GPU
    tails = []
    sr_tail = dirformer_fast.sr_tail
    monkeypatch.setattr(dirformer_fast, "sr_tail", lambda *args: tails.append(args) or sr_tail(*args))
    with torch.no_grad():
        eager = net(x, ipr)
        assert not tails
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        traced = net(x, ipr)
    assert len(tails) == 1 and tails[0][0] is net.tail
    assert (traced - eager).abs().max().item() <= 1e-5
    net.impl = "plain"  # an explicit 'plain' stays the three convs
    with torch.no_grad():
        net(x, ipr)
    assert len(tails) == 1


def test_stage_two_inference_runs_cpen_channels_last_beside_the_fast_path():
    torch.manual_seed(0)
    net = DiffIRS2(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, n_encoder_res=1, scale=4).eval()
    layouts = []
    net.condition.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    lq, noise = torch.rand(1, 3, 16, 16), torch.randn(1, 256)
    with torch.no_grad():
        fast = net(lq, noise=noise)
        net.impl = "plain"
        plain = net(lq, noise=noise)
    assert layouts == [True, False]
    assert (fast - plain).abs().max().item() <= 1e-5


def test_impl_shares_state_dict_and_defaults_to_auto():
    for cls, extra in ((DiffIRS1, {}), (DiffIRS2, {"timesteps": 4})):
        options = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, n_encoder_res=1, scale=4, **extra)
        default, plain = cls(**options), cls(**options, impl="plain")
        assert default.G.impl == "auto" and plain.G.impl == "plain"
        assert default.G.resolve_impl(torch.device("cpu")) == "fast"
        assert default.G.resolve_impl(torch.device("cuda")) == "plain"
        shapes = [(k, v.shape) for k, v in default.state_dict().items()]
        assert shapes == [(k, v.shape) for k, v in plain.state_dict().items()]
        plain.load_state_dict(default.state_dict())  # strict


def test_impl_and_checkpointing_are_set_on_every_level():
    net, x, ipr = tiny_dirformer("deblur")
    levels = [m for m in net.modules() if isinstance(m, IPRSequential)]
    assert len(levels) == 8
    assert all(m.run_block is dirformer_fast.transformer_block and not m.use_checkpoint for m in levels)
    net.impl, net.use_checkpoint = "plain", True
    assert all(m.run_block is plain_block and m.use_checkpoint for m in levels)
    net.impl = "auto"
    net.to("meta")  # 'auto' follows the device of the input, at the next call
    assert net(x.to("meta"), ipr.to("meta")).shape == x.shape
    assert all(m.run_block is plain_block for m in levels)


def test_network_options_select_impl_and_checkpointing():
    from basicsr.archs import build_network

    options = dict(type="DiffIRS2", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, n_encoder_res=1, scale=4)
    net = build_network({**options, "impl": "plain", "use_checkpoint": True})
    assert net.G.impl == "plain" and net.G.use_checkpoint
    default = build_network(options)
    assert default.G.impl == "auto" and not default.G.use_checkpoint


def test_invalid_impl_is_rejected():
    with pytest.raises(ValueError, match="impl must be one of"):
        DIRformer(dim=8, num_blocks=(1, 1, 1, 1), impl="quick")
    net = DIRformer(dim=8, num_blocks=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="impl must be one of"):
        net.impl = "Fast"


@torch.no_grad()
def test_fast_path_matches_official_fixture_in_float64():
    fx = load_fixture("official_sr_x4_fixture.pt")
    s1 = DiffIRS1(**fx["config"]["S1"], impl="fast").double().eval()
    s1.load_state_dict(materialize(fx["s1_params"]))
    assert (s1(fx["lq"], fx["gt"]) - fx["s1_out"]).abs().max().item() <= 1e-8
    s2 = DiffIRS2(**fx["config"]["S2"], impl="fast").double().eval()
    s2.load_state_dict(materialize(fx["s2_params"]))
    assert (s2(fx["lq"], noise=fx["s2_init_noise"]) - fx["s2_out"]).abs().max().item() <= 1e-8
    assert (s2.G(fx["lq"], fx["s1_ipr"]) - fx["s2_G_with_s1_ipr"]).abs().max().item() <= 1e-8


@pytest.mark.parametrize("impl", ["fast", "plain"])
def test_checkpointing_recomputes_blocks_with_same_outputs_and_gradients(impl):
    net, x, ipr = tiny_dirformer("sr_x4", impl=impl)
    net.train()
    out_ref, grads_ref = run(net, impl, x, ipr)

    calls = []  # the IPR modulation layer runs in both paths, once per block forward
    net.encoder_level1[0].attn.kernel.register_forward_hook(lambda *args: calls.append(1))
    net.use_checkpoint = True
    out, grads = run(net, impl, x, ipr)
    assert len(calls) == 2  # once forward, once recomputed during backward
    assert torch.equal(out, out_ref)
    assert_close_grads(grads_ref, grads, rtol=1e-6)

    calls.clear()
    with torch.no_grad():
        net(x, ipr)
    net.eval()
    net(x, ipr).sum().backward()
    assert len(calls) == 2  # no recomputation without grad or outside training


@pytest.mark.parametrize("variant", ["sr_x4", "deblur"])  # deblur: with biases, which are float32
@pytest.mark.parametrize("band_pixels", [dirformer_fast.BAND_PIXELS, 8])
def test_autocast_bfloat16_runs_on_cpu_close_to_float32(variant, band_pixels, monkeypatch):
    """Also on row bands (8 pixels: bands of 4 rows), where in-place and out= ops, which autocast does
    not cast, write each band's rows."""
    monkeypatch.setattr(dirformer_fast, "BAND_PIXELS", band_pixels)
    net, x, ipr = tiny_dirformer(variant)  # batch 2: a band's rows are strided across the samples
    net.eval()
    with torch.no_grad():
        ref = net(x, ipr)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x, ipr)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() <= 0.05 * ref.abs().max().item()


def test_float16_attention_does_not_overflow():
    """With a strong IPR modulation q and k are large, and their unnormalised products exceed float16's
    range (65504); the fast path must normalise q and k first in float16, as the plain path does."""
    net, x, ipr = tiny_dirformer("deblur")
    net.eval()
    ipr = 30 * ipr
    with torch.no_grad():
        ref = net.double()(x.double(), ipr.double())
        out = net.half()(x.half(), ipr.half())
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 0.02 * ref.abs().max().item()


@pytest.mark.parametrize("layer_norm_type", ["BiasFree", "WithBias"])
@pytest.mark.parametrize("ones_column", [False, True])
def test_norm_does_not_overflow_in_float16(layer_norm_type, ones_column):
    """Tokens whose sum of squares over the channels passes float16's range (RMS 40 over 128 channels)
    still normalise to the float32 result, as the plain path's per-element squares do."""
    norm = ChannelLayerNorm(128, layer_norm_type)
    tokens = 40 * torch.randn(2, 10, 128)
    ref = dirformer_fast.normalize_tokens(norm, tokens, ones_column)
    out = dirformer_fast.normalize_tokens(norm, tokens.half(), ones_column)
    assert ref[..., :128].abs().max() > 1
    assert (out.float() - ref).abs().max().item() <= 1e-2


@pytest.mark.parametrize("layer_norm_type", ["BiasFree", "WithBias"])
@pytest.mark.parametrize("ones_column", [False, True])
def test_norm_matches_the_plain_norm_far_from_zero_mean(layer_norm_type, ones_column):
    """Tokens with a mean 1000 times their std: the variance is taken of the centred tokens (the mean of
    squares minus the squared mean would lose it to cancellation in float32)."""
    norm = ChannelLayerNorm(96, layer_norm_type)
    tokens = 1000 + torch.randn(2, 10, 96)
    ref = norm(tokens.double().transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    out = dirformer_fast.normalize_tokens(norm, tokens, ones_column)[..., :96]
    assert ref.std(dim=-1).min() > 0.9  # BiasFree: not centred, but scaled by the same std
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-3)


def test_fast_path_compiles_without_graph_breaks():
    net, x, ipr = tiny_dirformer("sr_x4", num_blocks=(1, 1, 1, 1))
    net.eval()
    with torch.no_grad():
        ref = net(x, ipr)
        compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
        out = compiled(x, ipr)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_network_leaves_row_bands_to_eager_mode_unless_fullgraph(fullgraph, monkeypatch, request):
    """Compiled through the compile option, the levels that eager inference runs on row bands (here
    the 24 x 16 level 1 and the 12 x 8 level 2, 88-pixel bands) run eagerly on their bands, outside
    the graph, and only those; with fullgraph=True, which refuses graph breaks, they are traced on the
    whole map. More input sizes do not run into dynamo's recompile limit (a break inside the levels
    did, at the second size)."""
    # dynamo's cache of compiled frames is shared by the networks of one class: another test's graphs
    # (or the other case's) could serve this network, and this one's serve later tests
    torch._dynamo.reset()
    request.addfinalizer(torch._dynamo.reset)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    net, _, ipr = tiny_dirformer("sr_x4", num_blocks=(1, 1, 1, 1))
    monkeypatch.setattr(dirformer_fast, "BAND_PIXELS", 88)
    banded = []  # for each eager call of band_rows, whether it split its map
    original_band_rows = dirformer_fast.band_rows

    def band_rows(tokens, h, w):
        rows = original_band_rows(tokens, h, w)
        if not torch.compiler.is_compiling():
            banded.append(rows < h)
        return rows

    monkeypatch.setattr(dirformer_fast, "band_rows", band_rows)
    net.impl = "fast"
    net.eval()
    x = torch.rand(2, 3, 24, 16)
    with torch.no_grad():
        ref = net(x, ipr)
        assert banded.count(True) == 2 * 3 + 2 * 2  # the attention and the feed-forward of 3 + 2 blocks
        if not fullgraph:  # what dynamo makes of the network either way
            for outside in (True, False):
                net.row_bands_outside_graph = outside
                assert (torch._dynamo.explain(net)(x, ipr).graph_break_count > 0) is outside
        compile_network(net, {"backend": "aot_eager", "fullgraph": fullgraph})
        assert net.row_bands_outside_graph is not fullgraph
        banded.clear()
        out = net(x, ipr)
        assert banded == ([] if fullgraph else [True] * (2 * 3 + 2 * 2))
        assert (out - ref).abs().max().item() <= 1e-5
        for height in (32, 40, 48):
            net(torch.rand(2, 3, height, 16), ipr)


def test_compile_option_values_and_errors(monkeypatch):
    assert compile_arguments(None) is None and compile_arguments(False) is None
    assert compile_arguments(True) == {"dynamic": False}  # graphs specialised to each input shape
    assert compile_arguments("reduce-overhead") == {"mode": "reduce-overhead", "dynamic": False}
    assert compile_arguments({"backend": "aot_eager", "dynamic": None}) == {"backend": "aot_eager", "dynamic": None}
    with pytest.raises(ValueError, match=r"compile\.mode: expected one of .*got 'fastest'"):
        compile_arguments({"mode": "fastest"})
    with pytest.raises(ValueError, match=r"compile: unknown torch.compile argument\(s\) \['backnd'\]"):
        compile_arguments({"backnd": "eager"})
    with pytest.raises(ValueError, match="compile: expected true/false, a mode name"):
        compile_arguments(3)
    frozen = {"options": {"freezing": True}}
    assert compile_arguments(frozen) == {**frozen, "dynamic": False}
    with pytest.raises(ValueError, match=r"compile\.options\.freezing .*inference only"):
        compile_arguments(frozen, training=True)
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "freezing", True)  # as TORCHINDUCTOR_FREEZING=1 sets it
    with pytest.raises(ValueError, match=r"TORCHINDUCTOR_FREEZING=1"):
        compile_arguments(True, training=True)
    assert compile_arguments({"options": {"freezing": False}}, training=True)  # the option overrides the config


def test_compile_network_compiles_the_dirformer_in_place():
    """Only the DIRformer is compiled, in place: the state-dict keys stay those of the eager network
    (no ``_orig_mod.`` prefix), so checkpoints are interchangeable."""
    torch.manual_seed(0)
    net = DiffIRS2(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1],
                   scale=4).eval()
    keys = list(net.state_dict())
    x, noise = torch.rand(1, 3, 16, 16), torch.randn(1, 256)
    with torch.no_grad():
        ref = net(x, noise=noise)
        assert compile_network(net, {"backend": "aot_eager", "fullgraph": True}) is net
        out = net(x, noise=noise)
    assert net.G._compiled_call_impl is not None and net.condition._compiled_call_impl is None
    assert list(net.state_dict()) == keys
    assert (out - ref).abs().max().item() <= 1e-5


def test_compile_keeps_graphs_in_a_persistent_cache_unless_the_environment_names_one(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what torch sets once inductor is imported
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    net = DIRformer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    compile_network(net, {"backend": "aot_eager"})
    assert graph_cache_dir() == tmp_path / "diffir" / "torchinductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(graph_cache_dir())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_network(net, {"backend": "aot_eager"})
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
