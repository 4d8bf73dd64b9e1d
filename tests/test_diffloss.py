"""DiffLoss: values, shared draws, gradient flow, precision options, errors; the models' DiffLoss part, the generic
restoration model, DiffIR S1 with DiffLoss (logged to tensorboard), the own-prior trainer, the YAML files."""
import inspect
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from basicsr.losses import build_loss
from basicsr.models import build_model
from basicsr.utils import MessageLogger
from torch import nn
from torch.utils.data import DataLoader

from diffir.data.image_folder_dataset import ImageFolderDataset
from diffir.losses.diffloss_loss import DiffLoss
from diffir.models.base import build_diffloss
from diffir.options import load_yaml

OPTIONS = Path(__file__).parent.parent / "options" / "diffloss"
TINY_PRIOR = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16,8",
                  num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True)
RANDOM_PRIOR = dict(prior_path=None, prior_opt=TINY_PRIOR, allow_random_prior=True)
SCHEDULE = dict(type="MultiStepLR", milestones=[10**6], gamma=1.0)


def make_loss(**options) -> DiffLoss:
    torch.manual_seed(0)
    return DiffLoss(**{**RANDOM_PRIOR, **options})


def images(batch=2, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g)


class Restorer(nn.Module):
    """A tiny residual restoration network."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


def training_opt(tmp_path, model_type, network_g, train, **extra):
    paths = {"models": str(tmp_path / "models"), "training_states": str(tmp_path / "states")}
    for folder in paths.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    base_train = {"ema_decay": 0.9, "optim_g": {"type": "Adam", "lr": 1e-3}, "scheduler": dict(SCHEDULE),
                  "total_iter": 3}
    return {"name": "t", "model_type": model_type, "num_gpu": 0, "is_train": True, "dist": False, "rank": 0,
            "world_size": 1, "network_g": network_g, "path": paths, "train": {**base_train, **train},
            "logger": {"print_freq": 1, "use_tb_logger": True}, **extra}


def write_images(folder: Path, count=4, size=(40, 36)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return folder


# ---------------------------------------------------------------------------------------- the loss
def test_zero_for_identical_images_and_positive_otherwise():
    loss = make_loss()
    gt = images()
    torch.manual_seed(5)  # random t and noise: zero only if both branches share them
    same = loss.terms(gt, gt)
    assert same["l_nat"].item() == 0.0 and same["l_sem"].item() == 0.0
    different = loss.terms(0.8 * gt + 0.1, gt)
    assert different["l_nat"].item() > 0 and different["l_sem"].item() > 0
    assert torch.equal(loss(0.8 * gt + 0.1, gt, t=3, noise=torch.zeros(2, 3, 32, 32)),
                       sum(loss.terms(0.8 * gt + 0.1, gt, t=3, noise=torch.zeros(2, 3, 32, 32)).values()))


def test_value_matches_the_formula_and_is_reproducible():
    loss = make_loss(nat_weight=0.5, sem_weight=0.25)
    pred, gt = images(seed=1), images(seed=2)
    t = torch.tensor([17, 640])
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    terms = loss.terms(pred, gt, t=t, noise=noise)

    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)  # guided-diffusion's linear schedule
    alphas_cumprod = torch.from_numpy(np.cumprod(1 - betas))[t].float().reshape(-1, 1, 1, 1)

    def noised(img):
        return alphas_cumprod.sqrt() * (2 * img - 1) + (1 - alphas_cumprod).sqrt() * noise

    with torch.no_grad():
        eps_x, h_x = loss.prior(noised(pred), t)
        eps_z, h_z = loss.prior(noised(gt), t)
    expected_nat = 0.5 * (eps_x[:, :3] - eps_z[:, :3]).square().mean()  # ε channels only (learn_sigma)
    expected_sem = 0.25 * (h_x - h_z).square().mean()
    assert torch.allclose(terms["l_nat"], expected_nat, rtol=1e-5)
    assert torch.allclose(terms["l_sem"], expected_sem, rtol=1e-5)
    again = loss.terms(pred, gt, t=t, noise=noise)
    assert torch.equal(again["l_nat"], terms["l_nat"]) and torch.equal(again["l_sem"], terms["l_sem"])
    other_t = loss.terms(pred, gt, t=torch.tensor([500, 640]), noise=noise)
    assert not torch.equal(other_t["l_nat"], terms["l_nat"])


def test_timesteps_are_drawn_from_t_range():
    loss = make_loss(t_range=[5, 6])
    pred, gt = images(seed=1), images(seed=2)
    torch.manual_seed(9)
    drawn = loss.terms(pred, gt)
    torch.manual_seed(9)
    t = torch.randint(5, 6, (2,))
    noise = torch.randn(2, 3, 32, 32)
    assert torch.equal(drawn["l_nat"], loss.terms(pred, gt, t=t, noise=noise)["l_nat"])
    assert set(loss.diffusion.sample_timesteps(200, "cpu", 5, 8).tolist()) == {5, 6, 7}


def test_input_range_is_mapped_to_the_priors_range():
    pred, gt = images(seed=1), images(seed=2)
    noise = torch.randn(2, 3, 32, 32)
    unit = make_loss().terms(pred, gt, t=100, noise=noise)
    symmetric = make_loss(input_range=[-1, 1]).terms(2 * pred - 1, 2 * gt - 1, t=100, noise=noise)
    assert torch.allclose(unit["l_nat"], symmetric["l_nat"]) and torch.allclose(unit["l_sem"], symmetric["l_sem"])


@pytest.mark.parametrize("term", ["l_nat", "l_sem"])
def test_each_term_alone_sends_finite_nonzero_gradients_to_the_restorer(term):
    loss, net = make_loss(), Restorer()
    lq, gt = images(seed=1), images(seed=2)
    loss.terms(net(lq), gt, t=torch.tensor([50, 900]))[term].backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in loss.prior.parameters())


def test_checkpointing_and_bf16_keep_the_gradients():
    lq, gt = images(seed=1), images(seed=2)
    t, noise = torch.tensor([50, 900]), torch.randn(2, 3, 32, 32)

    def restorer_grads(**options):
        net = Restorer()
        make_loss(nat_weight=1.0, sem_weight=1.0, **options)(net(lq), gt, t=t, noise=noise).backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    plain = restorer_grads()
    assert torch.allclose(restorer_grads(checkpoint=True), plain, rtol=1e-4, atol=1e-7)
    bf16 = restorer_grads(autocast_dtype="bf16")
    assert torch.isfinite(bf16).all()
    assert torch.nn.functional.cosine_similarity(bf16, plain, dim=0) > 0.9  # same direction, bf16 rounding


def test_fit_modes():
    gt = images(size=48)
    pred = 0.9 * gt
    seen = []
    for fit, expected in (("resize", (32, 32)), ("random_crop", (32, 32)), ("none", (48, 48))):
        loss = make_loss(fit=fit)
        hook = loss.prior.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
        value = loss(pred, gt, t=10)
        hook.remove()
        assert torch.isfinite(value) and value > 0 and seen[-1] == expected, fit
    torch.manual_seed(0)
    assert make_loss(fit="random_crop")(gt, gt).item() == 0.0  # the same window of prediction and target
    with pytest.raises(ValueError, match="at least the prior's 32x32"):
        make_loss(fit="random_crop")(images(size=16), images(size=16))


def test_the_prior_stays_in_eval_mode():
    loss = make_loss()
    loss.train()
    assert not loss.prior.training


@pytest.mark.parametrize("pred, target, match", [
    (images(), images() * 255, r"outside input_range \[0, 1\]"),
    (images()[:, :1], images()[:, :1], "3-channel"),
    (images(), images(size=16), "same"),
])
def test_bad_images_are_refused(pred, target, match):
    with pytest.raises(ValueError, match=match):
        make_loss()(pred, target)


def test_input_range_is_checked_on_the_first_call_only(monkeypatch):
    loss = make_loss()
    with pytest.raises(ValueError, match=r"span \[0.*, 25\d.*\], outside input_range \[0, 1\]"):
        loss(images(), images() * 255)
    loss(images(), images())  # a failed check is repeated; this one passes

    def no_sync(tensor):
        raise AssertionError(".item() after the first call")

    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    loss(images(), images() * 255)  # no longer checked, so no GPU synchronisation either


def test_explicit_draws_are_checked():
    loss = make_loss()
    with pytest.raises(ValueError, match="noise must have the shape"):
        loss(images(), images(), noise=torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1000\)"):
        loss(images(), images(), t=1000)


@pytest.mark.parametrize("options, error, match", [
    ({"allow_random_prior": False}, ValueError, "256x256_diffusion_uncond.pt"),
    ({"prior_path": "missing/prior.pt"}, FileNotFoundError, r"missing/prior\.pt.*guided-diffusion"),
    ({"fit": "crop"}, ValueError, "fit must be one of"),
    ({"t_range": [10, 5]}, ValueError, "t_range"),
    ({"autocast_dtype": "int8"}, ValueError, "autocast_dtype"),
    ({"prior_opt": {**TINY_PRIOR, "bogus": 1}}, ValueError, "bogus"),
])
def test_bad_options_are_refused(options, error, match):
    with pytest.raises(error, match=match):
        DiffLoss(**{**RANDOM_PRIOR, **options})


def test_checkpoint_for_another_architecture_lists_the_keys(tmp_path):
    torch.save(make_loss().prior.state_dict(), tmp_path / "prior.pt")
    with pytest.raises(ValueError, match=r"wrong shape key\(s\): out.2.weight"):
        DiffLoss(tmp_path / "prior.pt", {**TINY_PRIOR, "learn_sigma": False})


# ---------------------------------------------------------------------------------------- the model's part
def test_build_diffloss_off_and_on():
    assert build_diffloss({}, "cpu") is None

    train_opt = {"diffloss_opt": {"type": "DiffLoss", **RANDOM_PRIOR}}
    loss = build_diffloss(train_opt, "cpu")
    assert train_opt["diffloss_opt"]["type"] == "DiffLoss"  # the options are not consumed
    assert isinstance(loss, DiffLoss) and not loss.training and not any(p.requires_grad for p in loss.parameters())
    terms = loss.terms(0.5 * images(), images())
    assert list(terms) == ["l_nat", "l_sem"] and all(v > 0 for v in terms.values())
    assert isinstance(build_loss({"type": "DiffLoss", **RANDOM_PRIOR}), DiffLoss)


# ---------------------------------------------------------------------------------------- models
def test_restoration_model_with_a_basicsr_architecture(tmp_path):
    network_g = {"type": "MSRResNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 1, "upscale": 2}
    train = {"pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
             "diffloss_opt": {**RANDOM_PRIOR, "nat_weight": 1.0, "sem_weight": 1.0}}
    model = build_model(training_opt(tmp_path, "RestorationModel", network_g, train, scale=2))
    prior_before = {k: v.clone() for k, v in model.cri_diffloss.prior.state_dict().items()}
    net_before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    gt = images(batch=2, size=32)
    for it in (1, 2):
        model.feed_data({"lq": torch.nn.functional.avg_pool2d(gt, 2), "gt": gt})
        model.optimize_parameters(it)
    log = model.get_current_log()
    assert set(log) == {"l_pix", "l_nat", "l_sem"} and log["l_nat"] > 0 and log["l_sem"] > 0
    assert all(torch.equal(v, prior_before[k]) for k, v in model.cri_diffloss.prior.state_dict().items())
    assert any(not torch.equal(v, net_before[k]) for k, v in model.net_g.state_dict().items())
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.net_g.parameters()}

    model.save(0, 2)
    saved = torch.load(tmp_path / "models" / "net_g_2.pth", weights_only=True)
    assert set(saved) == {"params", "params_ema"} and set(saved["params"]) == set(model.net_g.state_dict())
    model.feed_data({"lq": torch.rand(1, 3, 11, 13)})
    model.test()
    assert model.output.shape == (1, 3, 22, 26)


def test_diffir_s1_with_diffloss_logs_the_terms_to_tensorboard(tmp_path, tiny_diffir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    network_g = {"type": "DiffIRS1", **tiny_diffir, "inp_channels": 3, "out_channels": 3, "scale": 4,
                 "ffn_expansion_factor": 2.0, "bias": False, "LayerNorm_type": "BiasFree"}
    train = {"pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}, "diffloss_opt": dict(RANDOM_PRIOR)}
    opt = training_opt(tmp_path, "DiffIRS1Model", network_g, train, scale=4)
    model = build_model(opt)
    writer = SummaryWriter(str(tmp_path / "tb"))
    messages = MessageLogger(opt, 1, writer)
    gt = images(batch=2, size=32)
    lq = torch.nn.functional.interpolate(gt, scale_factor=0.25, mode="bicubic").clamp(0, 1)
    for it in (1, 2):
        model.feed_data({"lq": lq, "gt": gt})
        model.optimize_parameters(it)
        messages({"epoch": 0, "iter": it, "lrs": model.get_current_learning_rate(), **model.get_current_log()})
    writer.close()
    log = model.get_current_log()
    assert {"l_pix", "l_nat", "l_sem"} <= set(log) and log["l_nat"] > 0 and log["l_sem"] > 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"losses/l_nat", "losses/l_sem", "losses/l_pix"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("losses/l_nat")] == [1, 2]


def test_own_prior_trainer_runs_and_its_checkpoint_plugs_into_diffloss(tmp_path):
    prior_opt = {**TINY_PRIOR, "learn_sigma": False}
    opt = training_opt(tmp_path, "DiffusionPriorModel", {"type": "DiffusionPriorUNet", **prior_opt},
                       {"diffusion_opt": {"num_timesteps": 1000}})
    model = build_model(opt)
    data = ImageFolderDataset({"dataroot_gt": str(write_images(tmp_path / "imgs")), "image_size": 32,
                               "phase": "train"})
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    losses = []
    for it in (1, 2, 3):
        model.feed_data(batch)
        model.optimize_parameters(it)
        losses.append(model.get_current_log()["l_eps"])
    # the zero-initialised output predicts ε = 0 at first: the loss is E[ε²] ≈ 1
    assert 0.8 < losses[0] < 1.2 and all(np.isfinite(losses))
    val = DataLoader(ImageFolderDataset({"dataroot_gt": str(tmp_path / "imgs"), "image_size": 32, "phase": "val"}),
                     batch_size=2)
    assert model.eps_mse(val) == model.eps_mse(val) > 0  # fixed timesteps and noise: deterministic

    model.save(0, 3)
    diffloss = DiffLoss(tmp_path / "models" / "net_g_3.pth", prior_opt)
    ema = model.net_g_ema.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in diffloss.prior.state_dict().items())  # params_ema is used
    assert any(not torch.equal(v, ema[k]) for k, v in model.net_g.state_dict().items())
    assert torch.isfinite(diffloss(0.9 * images(), images()))


def test_own_prior_trainer_refuses_learned_sigma(tmp_path):
    opt = training_opt(tmp_path, "DiffusionPriorModel", {"type": "DiffusionPriorUNet", **TINY_PRIOR}, {})
    with pytest.raises(ValueError, match="learn_sigma must be false"):
        build_model(opt)


def test_image_folder_dataset(tmp_path):
    folder = write_images(tmp_path / "imgs", count=2, size=(20, 50))  # smaller than the patch: enlarged
    for crop in ("random", "center"):
        item = ImageFolderDataset({"dataroot_gt": str(folder), "image_size": 32, "crop": crop})[0]
        assert item["gt"].shape == (3, 32, 32) and 0 <= item["gt"].min() and item["gt"].max() <= 1
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset({"dataroot_gt": str(tmp_path / "nowhere"), "image_size": 32})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset({"dataroot_gt": str(tmp_path / "empty"), "image_size": 32})


# ---------------------------------------------------------------------------------------- YAML files
@pytest.mark.parametrize("name", sorted(p.name for p in OPTIONS.glob("*.yml")))
def test_option_files_are_valid(name):
    opt = load_yaml(str(OPTIONS / name))
    diffloss_opt = dict(opt["train"].get("diffloss_opt") or {})
    if diffloss_opt:
        assert diffloss_opt.pop("type", "DiffLoss") == "DiffLoss"
        inspect.signature(DiffLoss).bind(**diffloss_opt)  # every key is a DiffLoss option
    if opt["model_type"] == "DiffusionPriorModel":
        assert opt["network_g"]["type"] == "DiffusionPriorUNet" and not opt["network_g"]["learn_sigma"]


def test_tiny_demo_recipe_runs(tmp_path):
    """demo_tiny_prior.yml, then demo_tiny_diffloss.yml with that prior: one iteration each."""
    prior_opt = load_yaml(str(OPTIONS / "demo_tiny_prior.yml"))
    opt = training_opt(tmp_path / "prior", prior_opt["model_type"], prior_opt["network_g"], prior_opt["train"])
    model = build_model(opt)
    data = ImageFolderDataset({**prior_opt["datasets"]["train"], "phase": "train",
                               "dataroot_gt": str(write_images(tmp_path / "imgs"))})
    model.feed_data(torch.utils.data.default_collate([data[i] for i in range(2)]))
    model.optimize_parameters(1)
    model.save(0, -1)

    demo = load_yaml(str(OPTIONS / "demo_tiny_diffloss.yml"))
    network_prior = {k: v for k, v in prior_opt["network_g"].items() if k != "type"}
    assert {k: v for k, v in demo["train"]["diffloss_opt"]["prior_opt"].items()} == {
        k: v for k, v in network_prior.items() if k in demo["train"]["diffloss_opt"]["prior_opt"]}
    demo["train"]["diffloss_opt"]["prior_path"] = str(tmp_path / "prior" / "models" / "net_g_latest.pth")
    opt = training_opt(tmp_path / "s1", demo["model_type"], demo["network_g"], demo["train"], scale=demo["scale"])
    model = build_model(opt)
    gt = images(batch=2, size=64)
    model.feed_data({"lq": torch.nn.functional.interpolate(gt, scale_factor=0.25, mode="area"), "gt": gt})
    model.optimize_parameters(1)
    assert {"l_pix", "l_nat", "l_sem"} <= set(model.get_current_log())
