"""DiffIRS1 / DiffIRS2 per task variant: official structure, shapes, gradients, round trips, errors."""
import pytest
import torch
from basicsr.archs import build_network

from diffir import DiffIRS1, DiffIRS2
from diffir.archs.cpen import CPEN
from diffir.utils import crop_to, pad_to_multiple

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], ffn_expansion_factor=2.0,
            n_encoder_res=1)
# the official option blocks' selectors: SR/real-world SR carry scale, deblurring none, inpainting 4 channels
VARIANTS = {
    "sr_x4": dict(scale=4, LayerNorm_type="BiasFree"),
    "sr_x2": dict(scale=2, LayerNorm_type="BiasFree"),
    "sr_x1": dict(scale=1, LayerNorm_type="BiasFree"),
    "deblur": dict(LayerNorm_type="WithBias"),
    "inpaint": dict(inp_channels=4, dual_pixel_task=False, LayerNorm_type="WithBias"),
}
EXPECTED = {  # task, scale, size multiple, CPEN_S1 / CPEN_S2 input channels (paper-facts §1.2)
    "sr_x4": ("sr", 4, 8, 51, 3), "sr_x2": ("sr", 2, 16, 60, 12), "sr_x1": ("sr", 1, 32, 96, 48),
    "deblur": ("deblur", 1, 8, 96, 48), "inpaint": ("inpaint", 1, 8, 112, 64),
}


def tiny(cls, variant, **extra):
    torch.manual_seed(0)
    return cls(**TINY, **VARIANTS[variant], **extra)


def inputs(net, h, w, batch=2):
    lq = torch.rand(batch, net.inp_channels, h, w)
    gt = torch.rand(batch, net.out_channels, h * net.scale, w * net.scale)
    return lq, gt


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_selection_and_cpen_inputs(variant):
    task, scale, multiple, s1_in, s2_in = EXPECTED[variant]
    s1, s2 = tiny(DiffIRS1, variant), tiny(DiffIRS2, variant)
    for net in (s1, s2):
        assert (net.task, net.scale, net.size_multiple) == (task, scale, multiple)
    assert s1.E.E[0].in_channels == s1_in
    assert s2.condition.E[0].in_channels == s2_in
    has_refinement = any(k.startswith("G.refinement.") for k in s1.state_dict())
    assert has_refinement == (task != "inpaint")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [(17, 23), (24, 32)])
def test_output_shapes_after_documented_padding(variant, size):
    s1, s2 = tiny(DiffIRS1, variant).eval(), tiny(DiffIRS2, variant).eval()
    lq, gt = inputs(s1, *size)
    padded, orig = pad_to_multiple(lq, s1.size_multiple)
    gt_padded, _ = pad_to_multiple(gt, s1.size_multiple * s1.scale)
    with torch.no_grad():
        out1 = crop_to(s1(padded, gt_padded), orig, s1.scale)
        out2 = crop_to(s2(padded), orig, s2.scale)
        ipr = s2(padded, ipr_only=True)
    expected = (2, 3, size[0] * s1.scale, size[1] * s1.scale)
    assert out1.shape == expected and out2.shape == expected
    assert ipr.shape == (2, 256)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_reach_every_trainable_parameter(variant):
    s1 = tiny(DiffIRS1, variant).train()
    lq, gt = inputs(s1, 16 if variant != "sr_x1" else 32, 32)
    out, iprs = s1(lq, gt)
    (out.square().mean() + iprs[0].square().mean()).backward()
    dead = [n for n, p in s1.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead

    s2 = tiny(DiffIRS2, variant).train()
    out, iprs = s2(lq, torch.rand(2, 256))
    assert len(iprs) == 4 and all(ipr.shape == (2, 256) for ipr in iprs)
    (out.square().mean() + iprs[-1].square().mean()).backward()
    dead = [n for n, p in s2.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_round_trip_and_seeded_inference(variant, tmp_path):
    s2 = tiny(DiffIRS2, variant).eval()
    lq, _ = inputs(s2, 32, 32)
    path = tmp_path / "s2.pth"
    torch.save({"params": s2.state_dict()}, path)
    torch.manual_seed(1)
    other = tiny(DiffIRS2, variant)  # same shapes, different weights after the reload
    other.load_state_dict(torch.load(path, weights_only=True)["params"], strict=True)
    other.eval()
    with torch.no_grad():
        torch.manual_seed(7)
        first = s2(lq)
        torch.manual_seed(7)
        second = other(lq)
        third = s2(lq, generator=torch.Generator().manual_seed(7))
        different = s2(lq, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert torch.equal(first, third)
    assert not torch.equal(first, different)


@pytest.mark.parametrize("variant", ["sr_x2", "inpaint"])
def test_eval_forward_is_restore_with_ipr_of_estimate_ipr(variant):
    """The public inference steps are the forward: noise drawn first, then CPEN_S2 + diffusion, then G."""
    s2 = tiny(DiffIRS2, variant).eval()
    lq, _ = inputs(s2, 64, 96)
    with torch.no_grad():
        torch.manual_seed(5)
        forward = s2(lq)
        torch.manual_seed(5)
        noise = torch.randn(2, 256)
        ipr = s2.estimate_ipr(lq, noise)
        steps = s2.restore_with_ipr(lq, ipr)
        tiled_ipr = s2.estimate_ipr(lq, noise, tile=32)  # CPEN_S2 on 32-pixel tiles, halo included
    assert torch.equal(forward, steps)
    assert torch.allclose(tiled_ipr, ipr, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="noise must have shape"):
        s2.estimate_ipr(lq, noise[:1])


def test_head_semantics_of_each_task():
    """The residual each official head adds, isolated by zeroing the last conv."""
    with torch.no_grad():
        deblur = tiny(DiffIRS1, "deblur").eval()
        deblur.G.output.weight.zero_()
        lq, gt = inputs(deblur, 16, 16)
        assert torch.equal(deblur(lq, gt), lq)  # same-resolution head + input residual

        inpaint = tiny(DiffIRS1, "inpaint").eval()
        inpaint.G.output.weight.zero_()
        lq, gt = inputs(inpaint, 16, 16)
        assert torch.equal(inpaint(lq, gt), torch.zeros(2, 3, 16, 16))  # no residual

        for variant, scale in (("sr_x2", 2), ("sr_x1", 1)):
            sr = tiny(DiffIRS1, variant).eval()
            sr.G.tail[1].weight.zero_()
            sr.G.tail[1].bias.zero_()
            lq, gt = inputs(sr, 32, 32)
            nearest = torch.nn.functional.interpolate(lq, scale_factor=scale, mode="nearest")
            assert torch.equal(sr(lq, gt), nearest)  # x4 tail on the unshuffled input + nearest residual


def test_dual_pixel_inpainting_variant():
    net = tiny(DiffIRS1, "inpaint")
    dual = DiffIRS1(**TINY, inp_channels=4, dual_pixel_task=True)
    assert "G.skip_conv.weight" in dual.state_dict() and "G.skip_conv.weight" not in net.state_dict()
    lq, gt = inputs(dual, 16, 16)
    assert dual.eval()(lq, gt).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="dual_pixel_task"):
        DiffIRS1(**TINY, scale=4, dual_pixel_task=True)


def test_official_option_blocks_build_through_the_registry():
    block = dict(type="DiffIRS2", n_encoder_res=1, inp_channels=3, out_channels=3, scale=2, dim=8,
                 num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8], ffn_expansion_factor=2.2,
                 bias=False, LayerNorm_type="BiasFree", n_denoise_res=1, linear_start=0.1, linear_end=0.99,
                 timesteps=4)
    net = build_network(block)
    assert isinstance(net, DiffIRS2) and (net.task, net.scale) == ("sr", 2)
    deblur = {k: v for k, v in block.items() if k != "scale"}
    assert build_network(deblur).task == "deblur"
    assert build_network(dict(deblur, inp_channels=4, dual_pixel_task=False)).task == "inpaint"


# full-size parameter counts given by the official code (paper-facts §2, unique parameters) and
# state-dict entry counts (§3)
SR_FULL = dict(n_encoder_res=9, dim=64, num_blocks=[13, 1, 1, 1], num_refinement_blocks=13, heads=[1, 2, 4, 8],
               ffn_expansion_factor=2.2, bias=False, LayerNorm_type="BiasFree")
DEBLUR_FULL = dict(n_encoder_res=5, dim=48, num_blocks=[3, 5, 6, 6], num_refinement_blocks=4, heads=[1, 2, 4, 8],
                   ffn_expansion_factor=2, bias=False, LayerNorm_type="WithBias")
INPAINT_FULL = dict(n_encoder_res=5, inp_channels=4, dim=52, num_blocks=[1, 1, 1, 9], num_refinement_blocks=4,
                    heads=[1, 2, 4, 8], ffn_expansion_factor=1.8, bias=False, LayerNorm_type="WithBias")
FULL_SIZE = [
    ("sr_x4", dict(SR_FULL, scale=4), 24_801_478, 24_971_206, 547, 615),
    ("sr_x2", dict(SR_FULL, scale=2), 24_811_846, 24_981_574, 547, 615),
    ("sr_x1", dict(SR_FULL, scale=1), 24_853_318, 25_023_046, 547, 615),
    ("deblur", DEBLUR_FULL, 26_742_206, 26_911_934, 536, 588),
    ("inpaint", INPAINT_FULL, 26_232_746, 26_402_474, 237, 289),
    ("inpaint_big", dict(INPAINT_FULL, num_blocks=[1, 1, 1, 20], n_encoder_res=8), 49_313_194, 49_482_922, None, 456),
]


@pytest.mark.parametrize("name,kwargs,s1_params,s2_params,s1_keys,s2_keys", FULL_SIZE, ids=[f[0] for f in FULL_SIZE])
def test_full_size_parameter_counts_match_official(name, kwargs, s1_params, s2_params, s1_keys, s2_keys):
    with torch.device("meta"):
        s1, s2 = DiffIRS1(**kwargs), DiffIRS2(**kwargs)
    assert sum(p.numel() for p in s1.parameters()) == s1_params
    assert sum(p.numel() for p in s2.parameters()) == s2_params
    if s1_keys is not None:
        assert len(s1.state_dict()) == s1_keys
    assert len(s2.state_dict()) == s2_keys


def test_sr_x4_component_counts():
    with torch.device("meta"):
        s2 = DiffIRS2(**SR_FULL, scale=4)
        s1 = DiffIRS1(**SR_FULL, scale=4)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(s2.G), count(s1.E), count(s2.condition), count(s2.denoise)) == (
        23_459_142, 1_342_336, 1_314_688, 197_376)


class TestErrors:
    def test_wrong_channels(self):
        with pytest.raises(ValueError, match="expects 4-channel input, got 3"):
            tiny(DiffIRS2, "inpaint").eval()(torch.rand(1, 3, 16, 16))

    def test_not_4d(self):
        with pytest.raises(ValueError, match="4D"):
            tiny(DiffIRS2, "sr_x4").eval()(torch.rand(3, 16, 16))

    def test_size_not_a_multiple_names_the_multiple(self):
        with pytest.raises(ValueError, match="divisible by 16.*pad_to_multiple"):
            tiny(DiffIRS2, "sr_x2").eval()(torch.rand(1, 3, 24, 32))

    def test_gt_size_must_follow_scale(self):
        with pytest.raises(ValueError, match=r"ground truth must have shape \(1, 3, 64, 64\)"):
            tiny(DiffIRS1, "sr_x4")(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 32, 32))

    def test_stage_two_checkpoint_into_stage_one(self):
        state = tiny(DiffIRS2, "sr_x4").state_dict()
        with pytest.raises(RuntimeError, match="DiffIRS2 checkpoint.*network is DiffIRS1"):
            tiny(DiffIRS1, "sr_x4").load_state_dict(state)

    def test_stage_one_checkpoint_into_stage_two(self):
        state = tiny(DiffIRS1, "sr_x4").state_dict()
        with pytest.raises(RuntimeError, match="DiffIRS1 checkpoint.*network is DiffIRS2"):
            tiny(DiffIRS2, "sr_x4").load_state_dict(state)
        # non-strict, as the official S2 configs initialise the DIRformer from S1
        result = tiny(DiffIRS2, "sr_x4").load_state_dict(state, strict=False)
        assert all(k.startswith("E.") for k in result.unexpected_keys)

    def test_mismatched_keys_are_listed_briefly(self):
        state = tiny(DiffIRS1, "sr_x4").state_dict()
        state.pop("G.patch_embed.proj.weight")
        state["G.extra.weight"] = torch.zeros(1)
        state["E.mlp.0.bias"] = torch.zeros(3)
        with pytest.raises(RuntimeError) as err:
            tiny(DiffIRS1, "sr_x4").load_state_dict(state)
        message = str(err.value)
        assert "1 missing key(s): G.patch_embed.proj.weight" in message
        assert "1 unexpected key(s): G.extra.weight" in message
        assert "E.mlp.0.bias: checkpoint (3,) vs network (256,)" in message

    def test_invalid_options(self):
        with pytest.raises(ValueError, match="scale must be 1, 2 or 4"):
            DiffIRS1(**TINY, scale=3)
        with pytest.raises(ValueError, match="task must be one of"):
            DiffIRS1(**TINY, task="denoise")


@pytest.mark.parametrize("lq_unshuffle, gt_channels", [(1, 0), (2, 0), (1, 3), (4, 3)])  # S2 x4 / x2; S1 x4 / x1
def test_tiled_cpen_equals_whole_cpen_in_float64(lq_unshuffle, gt_channels):
    # the halo makes each tile's inner features exact; only the summation order may differ
    cpen = CPEN(lq_channels=3, lq_unshuffle=lq_unshuffle, gt_channels=gt_channels, n_encoder_res=2).double().eval()
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 3, 40 * lq_unshuffle, 56 * lq_unshuffle, dtype=torch.float64, generator=generator)
    # the ground truth, unshuffled by 4, has the unshuffled LQ's size
    gt = torch.rand(2, 3, 160, 224, dtype=torch.float64, generator=generator) if gt_channels else None
    with torch.no_grad():
        whole, tiled = cpen(lq, gt), cpen.forward_tiled(lq, 16 * lq_unshuffle, gt)
    assert tiled.dtype == torch.float64
    if lq_unshuffle > 1:  # a size the unshuffling cannot divide is an error, not cropped
        with pytest.raises(ValueError, match="must be a multiple"):
            cpen.forward_tiled(lq[..., :-1, :], 16 * lq_unshuffle, gt)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
