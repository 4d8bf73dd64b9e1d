"""Our DiffIRS1 / DiffIRS2 against outputs computed by running the official DiffIR code (SR x4)."""
import pytest
import torch
from basicsr.models.base_model import BaseModel

from diffir import DiffIRS1, DiffIRS2
from official_fixture import load_fixture, materialize, sha256_tensor

FX = load_fixture("official_sr_x4_fixture.pt")


def build(stage, dtype=torch.float64):
    cls, key, spec = (DiffIRS1, "S1", "s1_params") if stage == 1 else (DiffIRS2, "S2", "s2_params")
    net = cls(**FX["config"][key]).to(dtype)
    net.load_state_dict(materialize(FX[spec]), strict=True)
    return net.eval()


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def test_recipe_reproduces_stored_hashes():
    for spec in ("s1_params", "s2_params"):
        state = materialize(FX[spec])
        for key in list(state)[:5] + list(state)[-5:]:
            entry = FX[spec]["entries"][key]
            if entry["kind"] == "param":
                assert sha256_tensor(state[key].double()) == entry["sha256_float64"], key


def test_state_dict_keys_and_shapes_are_official():
    for stage, keys, shapes in ((1, "s1_state_dict_keys", "s1_state_dict_shapes"),
                                (2, "s2_state_dict_keys", "s2_state_dict_shapes")):
        net = build(stage)
        state = net.state_dict()
        assert list(state) == FX[keys]
        assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v) for k, v in FX[shapes].items()}


def test_schedule_buffers_match_official_float32_values():
    fresh = DiffIRS2(**FX["config"]["S2"])
    buffers = FX["s2_params"]["buffers"]
    for key, value in buffers.items():
        assert torch.equal(fresh.state_dict()[key].double(), value.double()), key


@torch.no_grad()
def test_stage_one_matches_official_float64():
    net = build(1)
    assert max_diff(net(FX["lq"], FX["gt"]), FX["s1_out"]) <= 1e-10
    assert max_diff(net.E(FX["lq"], FX["gt"]), FX["s1_ipr"]) <= 1e-10
    net.train()
    out, iprs = net(FX["lq"], FX["gt"])
    assert len(iprs) == 1 and max_diff(iprs[0], FX["s1_ipr"]) <= 1e-10
    assert max_diff(out, FX["s1_out"]) <= 1e-10


@torch.no_grad()
def test_stage_two_eval_matches_official_with_global_seed():
    net = build(2)
    assert max_diff(net.condition(FX["lq"]), FX["s2_cond"]) <= 1e-10
    assert max_diff(net.G(FX["lq"], FX["s1_ipr"]), FX["s2_G_with_s1_ipr"]) <= 1e-10
    steps = []
    hook = net.denoise.register_forward_hook(lambda m, args, out: steps.append((args[0].clone(), out.clone())))
    torch.manual_seed(FX["s2_eval_seed"])
    out = net(FX["lq"])
    hook.remove()
    assert max_diff(out, FX["s2_out"]) <= 1e-10
    assert [s["t"] for s in FX["s2_eval_steps"]] == [3, 2, 1, 0]
    for (x_in, x0), ref in zip(steps, FX["s2_eval_steps"]):
        assert max_diff(x_in, ref["x_in"]) <= 1e-10 and max_diff(x0, ref["x0_pred"]) <= 1e-10
    assert max_diff(net(FX["lq"], ipr_only=True, noise=FX["s2_init_noise"]), FX["s2_ipr"]) <= 1e-10


@torch.no_grad()
def test_stage_two_explicit_noise_and_generator():
    net = build(2)
    assert max_diff(net(FX["lq"], noise=FX["s2_init_noise"]), FX["s2_out"]) <= 1e-10
    generator = torch.Generator().manual_seed(FX["s2_eval_seed"])
    assert max_diff(net(FX["lq"], generator=generator), FX["s2_out"]) <= 1e-10


@torch.no_grad()
def test_stage_two_train_mode_matches_official():
    net = build(2).train()
    torch.manual_seed(FX["s2_train_seed"])
    out, iprs = net(FX["lq"], FX["s2_train_ipr_input"])
    assert max_diff(out, FX["s2_train_out"]) <= 1e-10
    assert len(iprs) == 4
    for ours, ref in zip(iprs, FX["s2_train_ipr_list"]):
        assert max_diff(ours, ref) <= 1e-10
    x_noisy = net.diffusion.q_sample(FX["s2_train_ipr_input"], 3, FX["s2_train_noise"])
    assert torch.equal(x_noisy, FX["s2_train_x_noisy"])
    out2, _ = net(FX["lq"], FX["s2_train_ipr_input"], noise=FX["s2_train_noise"])
    assert max_diff(out2, FX["s2_train_out"]) <= 1e-10


@torch.no_grad()
def test_float32_within_tolerance():
    s1, s2 = build(1, torch.float32), build(2, torch.float32)
    lq, gt = FX["lq"].float(), FX["gt"].float()
    assert max_diff(s1(lq, gt), FX["s1_out"]) <= 1e-5
    torch.manual_seed(FX["s2_eval_seed"])
    assert max_diff(s2(lq), FX["s2_out"]) <= 1e-5


class _Loader(BaseModel):
    """basicsr's load_network needs only BaseModel's helpers, not a whole training model."""

    def __init__(self):  # noqa: D401 - no options needed
        pass


@pytest.mark.parametrize("param_key", ["params", "params_ema"])
def test_basicsr_load_network_with_official_file_layout(tmp_path, param_key):
    path = tmp_path / "net_g.pth"
    official = materialize(FX["s2_params"])
    torch.save({"params": official, "params_ema": official}, path)
    net = DiffIRS2(**FX["config"]["S2"]).double()
    _Loader().load_network(net, str(path), strict=True, param_key=param_key)
    torch.manual_seed(FX["s2_eval_seed"])
    with torch.no_grad():
        assert max_diff(net.eval()(FX["lq"]), FX["s2_out"]) <= 1e-10
