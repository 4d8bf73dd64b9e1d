"""DiffusionPriorUNet: guided-diffusion key compatibility, forward contract, attention maths, loading errors."""
import json
import math
from pathlib import Path

import pytest
import torch
from basicsr.archs import build_network
from torch import nn

from diffir.archs.prior_unet_arch import (DiffusionPriorUNet, build_prior, count_parameters, load_prior_weights,
                                          timestep_embedding)

FIXTURE = Path(__file__).parent / "fixtures" / "guided_diffusion_256x256_uncond_keys.json"
TINY = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16,8",
            num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True)


def tiny_prior(**overrides) -> DiffusionPriorUNet:
    """A tiny prior whose zero-initialised layers get random weights, so every layer affects the output."""
    torch.manual_seed(0)
    model = DiffusionPriorUNet(**{**TINY, **overrides})
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and not module.weight.any():
            module.reset_parameters()
    return model.eval()


def test_full_size_state_dict_matches_guided_diffusion_256_uncond():
    spec = json.loads(FIXTURE.read_text())
    with torch.device("meta"):  # 553 M parameters: shapes only, no memory
        model = DiffusionPriorUNet(**spec["create_model_kwargs"])
    ours = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert len(ours) == 566
    assert ours == spec["state_dict_shapes"]
    assert count_parameters(model) == spec["num_params"] == 552_814_086


def test_registered_and_built_from_create_model_arguments():
    model = build_network({"type": "DiffusionPriorUNet", **TINY})
    assert isinstance(model, DiffusionPriorUNet)
    assert model.out_channels == 6 and model.size_multiple == 2


def test_forward_returns_output_and_middle_block_features():
    model = tiny_prior()
    x = torch.randn(2, 3, 32, 32)
    out, h = model(x, torch.tensor([0, 999]))
    assert out.shape == (2, 6, 32, 32)  # ε and the learned-variance channels
    assert h.shape == (2, 64, 16, 16)  # middle block: widest level (32 x 2) at the lowest resolution
    # h is exactly the middle block's output
    captured = {}
    model.middle_block.register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    _, h_again = model(x, torch.tensor([0, 999]))
    assert torch.equal(h_again, captured["h"])
    # timesteps matter, per sample
    out_b, _ = model(x, torch.tensor([0, 500]))
    assert torch.equal(out_b[0], out[0]) and not torch.allclose(out_b[1], out[1])


def test_default_init_outputs_zero_like_guided_diffusion():
    torch.manual_seed(0)
    out, _ = DiffusionPriorUNet(**TINY)(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    assert out.abs().max().item() == 0.0  # zero-initialised output conv


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    assert torch.allclose(emb[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # dim 4: frequencies 1 and 10000 ** (-1/2) = 0.01
    expected = torch.tensor([math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)])
    assert torch.allclose(emb[1], expected, atol=1e-7)
    assert timestep_embedding(torch.tensor([3.0]), 5).shape == (1, 5)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_equals_scaled_qkv_formula(new_order):
    """Our fused attention equals softmax((q/ch^¼)·(k/ch^¼)) v with guided-diffusion's head splits."""
    torch.manual_seed(0)
    model = tiny_prior(use_new_attention_order=new_order).double()
    block = model.middle_block[1]
    x = torch.randn(2, 64, 4, 4, dtype=torch.float64)
    heads, ch = block.num_heads, 64 // block.num_heads
    qkv = block.qkv(block.norm(x.reshape(2, 64, -1)))
    if new_order:
        q, k, v = (t.reshape(2 * heads, ch, 16) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(2 * heads, 3 * ch, 16).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    attended = torch.einsum("bts,bcs->bct", weight, v).reshape(2, 64, 16)
    expected = (x.reshape(2, 64, 16) + block.proj_out(attended)).reshape(2, 64, 4, 4)
    assert heads == 4
    assert torch.allclose(block(x), expected, atol=1e-12)


def test_gradient_reaches_input_of_frozen_prior_with_and_without_checkpointing():
    model = tiny_prior().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([100, 700])
    grads = []
    for enabled in (False, True):
        model.set_activation_checkpointing(enabled)
        xi = x.clone().requires_grad_(True)
        out, h = model(xi, t)
        (out.square().mean() + h.square().mean()).backward()
        grads.append(xi.grad)
    assert all(p.grad is None for p in model.parameters())
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_strict_round_trip_through_a_file(tmp_path):
    model = tiny_prior()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([321])
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    torch.save({"params": {k: v * 0 for k, v in model.state_dict().items()},
                "params_ema": model.state_dict()}, tmp_path / "basicsr.pth")
    for name in ("raw.pt", "basicsr.pth"):  # a guided-diffusion file, a basicsr checkpoint (EMA preferred)
        fresh = build_prior(TINY, tmp_path / name).eval()
        assert fresh.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
        assert torch.equal(fresh(x, t)[0], model(x, t)[0])
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "half.pt")
    fresh = DiffusionPriorUNet(**TINY)
    load_prior_weights(fresh, tmp_path / "half.pt")  # 16-bit files load as float32 weights
    assert all(p.dtype == torch.float32 for p in fresh.parameters())
    assert torch.equal(fresh.out[2].weight, model.out[2].weight.half().float())


def test_incompatible_checkpoint_lists_the_mismatching_keys(tmp_path):
    state = tiny_prior().state_dict()
    state.pop("out.2.bias")
    state["extra.weight"] = torch.zeros(1)
    state["input_blocks.0.0.weight"] = torch.zeros(32, 4, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_prior_weights(DiffusionPriorUNet(**TINY), tmp_path / "bad.pt")
    message = str(err.value)
    assert "out.2.bias" in message and "extra.weight" in message
    assert "input_blocks.0.0.weight: checkpoint (32, 4, 3, 3) vs network (32, 3, 3, 3)" in message


def test_missing_checkpoint_names_file_and_official_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*256x256_diffusion_uncond\.pt.*guided-diffusion"):
        load_prior_weights(DiffusionPriorUNet(**TINY), tmp_path / "nope.pt")


def test_conv_resampling_variant_and_class_conditioning():
    model = DiffusionPriorUNet(**{**TINY, "resblock_updown": False, "class_cond": True, "learn_sigma": False})
    keys = model.state_dict().keys()
    assert "input_blocks.2.0.op.weight" in keys and "output_blocks.1.2.conv.weight" in keys
    assert "label_emb.weight" in keys
    out, _ = model(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), y=torch.tensor([3, 4]))
    assert out.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="class labels"):
        model(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))


@pytest.mark.parametrize("overrides, match", [
    ({"channel_mult": ""}, "no default for image_size 32"),
    ({"num_channels": 24}, "divisible by 32"),
    ({"attention_resolutions": "12"}, "must divide image_size"),
    ({"num_head_channels": 24}, "not divisible by num_head_channels"),
])
def test_bad_configuration_is_refused_clearly(overrides, match):
    with pytest.raises(ValueError, match=match):
        DiffusionPriorUNet(**{**TINY, **overrides})


def test_input_size_must_fit_the_downsampling():
    with pytest.raises(ValueError, match="divisible by 2"):
        tiny_prior()(torch.randn(1, 3, 33, 32), torch.tensor([0]))
