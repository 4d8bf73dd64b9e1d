"""Inpainting: masks, dataset, LaMa losses, the S1/S2 training models, FID, LaMa checkpoint conversion."""
import runpy
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml

from diffir import DiffIRS1, DiffIRS2
from diffir.archs.nlayer_discriminator_arch import NLayerDiscriminator
from diffir.checkpoint import CheckpointError, read_lightning_checkpoint
from diffir.data.inpainting_dataset import InpaintingDataset
from diffir.data.masks import (MaskGenerator, coverage_stats, draw_box_mask, BoxMaskOptions,
                               generate_mask_set, read_mask, seeded_rng)
from diffir.inpainting import composite, inpaint, prepare_inpainting_input
from diffir.losses.inpainting_loss import (FeatureMatchingLoss, MaskedL1Loss, NonSaturatingR1Loss, ResNetPLLoss,
                                           ADE20K_ENCODER)
from diffir.metrics.fid import (FIDAccumulator, InceptionFeatures, feature_statistics, fid_from_features,
                                frechet_distance)
from diffir.options import load_yaml
from diffir.utils.lama_checkpoint import convert_lama_checkpoint, main as convert_main, save_converted

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_encoder_res=1, inp_channels=4, out_channels=3, dim=8, num_blocks=[1, 1, 1, 1],
            num_refinement_blocks=0, heads=[1, 1, 2, 2], ffn_expansion_factor=1.8, bias=False,
            LayerNorm_type="WithBias")


def write_images(folder, sizes, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return folder


# ------------------------------------------------------------------------------------------ masks
def test_masks_are_reproducible_from_a_seed_and_binary():
    gen = MaskGenerator.from_options("train")
    a = gen(64, 96, np.random.default_rng(7))
    b = gen(64, 96, np.random.default_rng(7))
    c = gen(64, 96, np.random.default_rng(8))
    assert a.shape == (64, 96) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 1.0}


@pytest.mark.parametrize("preset,mean_range", [("thin_256", (0.24, 0.34)), ("thick_256", (0.21, 0.32)),
                                               ("train", (0.29, 0.40))])
def test_preset_coverage_matches_the_documented_ranges(preset, mean_range):
    stats = coverage_stats(MaskGenerator.from_options(preset), 256, n=120, seed=1)
    assert mean_range[0] < stats["mean"] < mean_range[1], stats
    if preset != "train":  # LaMa's evaluation sets reject masks over half the image
        assert stats["max"] <= 0.5 and stats["min"] > 0
    else:
        assert stats["max"] > 0.5


def test_requested_coverage_range_is_enforced():
    gen = MaskGenerator.from_options({"preset": "thick_256", "min_hole_fraction": 0.1, "max_hole_fraction": 0.2})
    fractions = [gen(128, 128, np.random.default_rng(i)).mean() for i in range(30)]
    assert all(0.1 <= f <= 0.2 for f in fractions)
    with pytest.raises(RuntimeError, match=r"hole fraction in \[0.999, 1.0\]"):
        MaskGenerator(min_hole_fraction=0.999, max_tries=5)(64, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="segm_proba"):
        MaskGenerator(segm_proba=1)
    with pytest.raises(ValueError, match="unknown mask preset"):
        MaskGenerator.from_options("thick_1024")


def test_boxes_respect_margin_and_size():
    options = BoxMaskOptions(margin=10, bbox_min_size=30, bbox_max_size=40, min_times=1, max_times=1)
    for seed in range(20):
        mask = draw_box_mask(100, 120, np.random.default_rng(seed), options)
        ys, xs = np.nonzero(mask)
        assert ys.min() >= 10 and xs.min() >= 10 and ys.max() < 90 and xs.max() < 110
        assert 30 <= ys.max() - ys.min() + 1 <= 40 and 30 <= xs.max() - xs.min() + 1 <= 40


def test_fixed_mask_set_is_reproducible_and_per_image(tmp_path):
    images = write_images(tmp_path / "images", [(80, 96), (96, 96), (88, 104)])
    gen = MaskGenerator.from_options("thick_256")
    coverage = generate_mask_set(images, tmp_path / "a", gen, seed=3)
    assert sorted(coverage) == ["img0", "img1", "img2"]
    write_images(tmp_path / "images", [(80, 96), (96, 96), (88, 104), (64, 64)], seed=0)  # one image added
    generate_mask_set(images, tmp_path / "b", gen, seed=3)
    for stem, fraction in coverage.items():
        a, b = read_mask(tmp_path / "a" / f"{stem}.png"), read_mask(tmp_path / "b" / f"{stem}.png")
        assert np.array_equal(a, b) and a.shape == cv2.imread(str(images / f"{stem}.png")).shape[:2]
        assert a.mean() == pytest.approx(fraction)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_mask_set(images, tmp_path / "a", gen, seed=3)


def test_generate_masks_script(tmp_path, capsys):
    images = write_images(tmp_path / "images", [(96, 96), (80, 112)])
    script = runpy.run_path(str(REPO / "scripts" / "generate_masks.py"))  # its main(), without a new interpreter
    script["main"]([str(images), str(tmp_path / "masks"), "--preset", "thin_256", "--seed", "5"])
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["img0.png", "img1.png"]
    assert "wrote 2 masks" in capsys.readouterr().out
    expected = MaskGenerator.from_options("thin_256")(80, 112, seeded_rng(5, "img1"))
    assert np.array_equal(read_mask(tmp_path / "masks" / "img1.png"), expected)


# ------------------------------------------------------------------------------------------ dataset
def test_dataset_train_items(tmp_path):
    images = write_images(tmp_path / "gt", [(40, 56), (24, 30)])
    opt = dict(phase="train", dataroot_gt=str(images), out_size=32, use_hflip=True, augment="distortions",
               mask_generator={"preset": "train", "box_kwargs": dict(margin=2, bbox_min_size=4, bbox_max_size=20,
                                                                       min_times=1, max_times=2)})
    dataset = InpaintingDataset(opt)
    for index in (0, 1, 1):
        item = dataset[index]
        assert item["lq"].shape == (4, 32, 32) and item["gt"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)
        assert torch.equal(item["lq"][3:], item["mask"])
        assert torch.equal(item["lq"][:3], item["gt"] * (1 - item["mask"]))
        assert 0 <= item["gt"].min() and item["gt"].max() <= 1 and item["mask"].sum() > 0


def test_dataset_validation_masks_fixed_or_from_folder(tmp_path):
    images = write_images(tmp_path / "gt", [(64, 72), (80, 64)])
    val = InpaintingDataset(dict(phase="val", dataroot_gt=str(images), mask_generator="thick_256", mask_seed=4))
    first, again = val[1], val[1]
    assert first["gt"].shape == (3, 80, 64) and torch.equal(first["mask"], again["mask"])
    gt_file = cv2.imread(str(images / "img1.png"))[..., ::-1] / 255.0
    assert torch.allclose(first["gt"], torch.from_numpy(gt_file.copy()).permute(2, 0, 1).float())

    # LaMa's evaluation layout: x.png next to x_mask000.png
    lama = write_images(tmp_path / "lama", [(32, 40)])
    mask = np.zeros((32, 40), np.uint8)
    mask[5:20, 8:30] = 255
    cv2.imwrite(str(lama / "img0_mask000.png"), mask)
    lama_set = InpaintingDataset(dict(phase="val", dataroot_gt=str(lama), dataroot_mask=str(lama),
                                      mask_suffix="_mask000"))
    assert len(lama_set) == 1
    item = lama_set[0]
    assert item["mask"].sum() == 15 * 22 and item["mask_path"].endswith("img0_mask000.png")
    with pytest.raises(FileNotFoundError, match="have no mask"):
        InpaintingDataset(dict(phase="val", dataroot_gt=str(images), dataroot_mask=str(lama)))


# ------------------------------------------------------------------------------------------ losses and D
def test_discriminator_layout_and_features():
    d = NLayerDiscriminator(ndf=8, n_layers=4)
    logits, features = d(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == [8, 16, 32, 64, 128] and logits.shape == (2, 1, 7, 7)
    assert "model0.0.weight" in d.state_dict() and "model4.1.running_mean" in d.state_dict()
    assert "model5.0.weight" in d.state_dict() and "model0.1.weight" not in d.state_dict()


def test_loss_values():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    expected = ((10 * (1 - mask) + 2 * mask) * (pred - target).abs()).mean()
    assert torch.allclose(MaskedL1Loss(10, 2)(pred, target, mask), expected)
    feats_a = [torch.rand(2, 4, 4, 4), torch.rand(2, 8, 2, 2)]
    feats_b = [torch.rand(2, 4, 4, 4), torch.rand(2, 8, 2, 2)]
    fm = sum(torch.nn.functional.mse_loss(a, b) for a, b in zip(feats_a, feats_b)) / 2
    assert torch.allclose(FeatureMatchingLoss(100)(feats_a, feats_b), 100 * fm)


def test_r1_adversarial_loss_against_a_linear_discriminator():
    weight = torch.randn(1, 3, 4, 4)

    class Linear(torch.nn.Module):  # D(x) = <w, x> per image: dD/dx = w, so R1 = ||w||^2
        def forward(self, x):
            return (x * weight).sum(dim=(1, 2, 3), keepdim=True), []

    real, fake = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0] = 1  # image 0 all hole, image 1 all known
    loss = NonSaturatingR1Loss(loss_weight=10, gp_coef=0.5, mask_as_fake_target=True)
    l_d, metrics = loss.discriminator_loss(Linear(), real, fake, mask)
    d_real, d_fake = (real * weight).sum((1, 2, 3)), (fake * weight).sum((1, 2, 3))
    sp = torch.nn.functional.softplus
    # the resized (maxpool-free, nearest) mask is 1 for image 0: fake term softplus(D); image 1: softplus(-D)
    expected = sp(-d_real).mean() + 0.5 * weight.pow(2).sum() + (sp(d_fake[0]) + sp(-d_fake[1])) / 2
    assert torch.allclose(l_d, expected, atol=1e-5) and torch.allclose(metrics["d_r1"], weight.pow(2).sum())
    assert torch.allclose(loss.generator_loss(d_fake.view(2, 1, 1, 1), mask), 10 * sp(-d_fake).mean())


def test_resnet_pl_layout_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_epoch_20.pth"):
        ResNetPLLoss(weights_path=str(tmp_path))
    torch.manual_seed(0)
    random = ResNetPLLoss(loss_weight=30, random_weights=True)
    keys = random.encoder.state_dict()
    assert {"conv3.weight", "bn3.running_var", "layer3.0.downsample.0.weight", "layer4.2.conv3.weight"} <= set(keys)
    assert random.encoder.layer4[1].conv2.dilation == (4, 4)
    path = tmp_path / ADE20K_ENCODER
    path.parent.mkdir(parents=True)
    torch.save(keys, path)
    loaded = ResNetPLLoss(loss_weight=30, weights_path=str(tmp_path)).train()
    assert not loaded.encoder.training and not any(p.requires_grad for p in loaded.parameters())
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.backends.mkldnn.flags(enabled=False):  # oneDNN's first-call set-up of 50 convs costs seconds
        assert torch.allclose(loaded(x, y), random(x, y)) and loaded(x, x).item() == 0


# ------------------------------------------------------------------------------------------ training models
def make_options(tmp_path, stage, s1_ckpt=None):
    opt = load_yaml(str(REPO / "options" / "demo" / f"inpaint_train_DiffIRS{stage}.yml"))
    for key in ("network_g", "network_S1"):
        if key in opt:
            opt[key].update(TINY)
    opt["network_d"].update(ndf=8, n_layers=2)
    opt["datasets"]["train"].update(dataroot_gt=str(write_images(tmp_path / "train", [(40, 40)])), out_size=32,
                                    num_worker_per_gpu=0, batch_size_per_gpu=2)
    opt["datasets"]["val"]["dataroot_gt"] = str(write_images(tmp_path / "val", [(60, 68), (56, 56)]))
    opt["val"]["fid"] = {"random_weights": True, "resize_to": 75}
    if s1_ckpt:
        opt["path"].update(pretrain_network_g=str(s1_ckpt), pretrain_network_S1=str(s1_ckpt))
    path = tmp_path / f"inpaint_s{stage}.yml"
    path.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    from diffir.options import parse_options
    parsed, _ = parse_options(is_train=True, argv=["-opt", str(path), "--root", str(tmp_path)])
    for key in ("models", "training_states", "visualization", "log"):
        Path(parsed["path"][key]).mkdir(parents=True, exist_ok=True)
    return parsed


def inpainting_batch(size=32):
    torch.manual_seed(0)
    gt = torch.rand(2, 3, size, size)
    mask = torch.zeros(2, 1, size, size)
    mask[0, :, 4:20, 6:26] = 1
    mask[1, :, 10:30, 2:12] = 1
    return {"lq": prepare_inpainting_input(gt, mask), "gt": gt, "mask": mask}


def run_and_check_known_pixels(model, batch, iters):
    d_before = model.adversarial.net_d.model0[0].weight.clone()
    for it in range(1, iters + 1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        log = model.get_current_log()
        assert {"l_pix", "l_g_gan", "l_g_fm", "l_d", "d_r1"} <= set(log), log
        assert all(np.isfinite(v) for v in log.values())
    assert not torch.equal(model.adversarial.net_d.model0[0].weight, d_before)  # the discriminator trains
    model.feed_data(batch)
    model.test()
    known = 1 - batch["mask"]
    assert torch.equal(model.output * known, batch["gt"] * known)  # known pixels come back exactly
    assert not torch.equal(model.output, batch["gt"])
    return log


def test_stage_one_and_two_train_and_keep_known_pixels(tmp_path):
    s1 = build_model(make_options(tmp_path, 1))
    assert s1.ema_decay == 0 and not hasattr(s1, "net_g_ema")
    g_before = s1.net_g.G.patch_embed.proj.weight.clone()
    run_and_check_known_pixels(s1, inpainting_batch(), iters=3)
    assert not torch.equal(s1.net_g.G.patch_embed.proj.weight, g_before)
    s1.save(epoch=0, current_iter=3)
    s1_ckpt = Path(s1.opt["path"]["models"]) / "net_g_3.pth"
    assert (Path(s1.opt["path"]["models"]) / "net_d_3.pth").is_file()
    s1.feed_data({"lq": inpainting_batch()["lq"]})  # a batch without GT and mask drops the earlier ones
    assert not hasattr(s1, "gt") and not hasattr(s1, "mask")

    s2 = build_model(make_options(tmp_path, 2, s1_ckpt))
    s1_weights = torch.load(s1_ckpt, weights_only=True)["params"]
    assert torch.equal(s2.net_g.G.patch_embed.proj.weight, s1_weights["G.patch_embed.proj.weight"])
    log = run_and_check_known_pixels(s2, inpainting_batch(), iters=3)
    assert "l_ipr" in log
    assert all(torch.equal(p, s1_weights[k]) for k, p in s2.net_g_S1.state_dict().items())  # S1 stays frozen


def test_validation_reports_fid(tmp_path):
    model = build_model(make_options(tmp_path, 1))
    from basicsr.data import build_dataloader, build_dataset
    val_opt = model.opt["datasets"]["val"]
    loader = build_dataloader(build_dataset(val_opt), val_opt, num_gpu=0, dist=False)
    model.validation(loader, current_iter=1, tb_logger=None, save_img=False)
    assert "fid" not in model.metric_results  # logged, then removed so it is not averaged again
    best = model.best_metric_results["DemoHeldOut"]["fid"]
    assert best["iter"] == 1 and np.isfinite(best["val"]) and best["better"] == "lower"


def test_inpaint_helper_pads_and_keeps_known_pixels():
    torch.manual_seed(0)
    net = DiffIRS2(**TINY).eval()
    image, mask = torch.rand(1, 3, 30, 27), torch.zeros(1, 1, 30, 27)
    mask[..., 5:15, 3:20] = 1
    out = inpaint(net, image, mask, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    assert torch.equal(out * (1 - mask), image * (1 - mask)) and not torch.equal(out, image)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        prepare_inpainting_input(image, mask[:, 0])
    assert torch.equal(composite(out, image, torch.zeros_like(mask)), image)


# ------------------------------------------------------------------------------------------ FID
@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    return InceptionFeatures(random_weights=True, resize_to=75)


def test_fid_is_zero_against_itself_and_grows_with_noise(inception):
    torch.manual_seed(1)
    images = torch.rand(24, 3, 32, 32)
    fids = []
    for sigma in (0.0, 0.05, 0.2):
        noisy = (images + sigma * torch.randn_like(images)).clamp(0, 1)
        acc = FIDAccumulator(inception)
        acc.update(noisy[torch.randperm(24)], images)  # order does not matter
        fids.append(acc.compute())
    scale = np.trace(feature_statistics(torch.cat(acc.real))[1])
    assert abs(fids[0]) < 1e-9 * scale and 0 < fids[1] < fids[2], (fids, scale)


def test_frechet_distance_closed_form_and_methods_agree():
    # 1-D: (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2) = 1 + 1 + 4 - 4 = 2
    assert frechet_distance([0.0], [[1.0]], [1.0], [[4.0]], method="eigh") == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 6)), rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 0.3
    stats = feature_statistics(a) + feature_statistics(b)
    assert frechet_distance(*stats, method="scipy") == pytest.approx(frechet_distance(*stats, method="eigh"), rel=1e-8)
    # fewer images than dimensions (singular covariances): the low-rank form equals the full eigen-decomposition
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(30, 64)) * 1.5 + 0.1
    lowrank = fid_from_features(a, b, method="lowrank")
    assert lowrank == pytest.approx(fid_from_features(a, b, method="eigh"), rel=1e-7) and lowrank > 0


def test_inception_weights_from_a_local_file(tmp_path, inception):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        InceptionFeatures(weights_path=tmp_path / "missing.pth")
    state = {k: v for k, v in inception.net.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # pytorch-fid's head
    torch.save(state, tmp_path / "fid.pth")
    loaded = InceptionFeatures(weights_path=tmp_path / "fid.pth", resize_to=75)
    assert "FID Inception" in loaded.source
    images = torch.rand(2, 3, 40, 40)
    assert torch.allclose(loaded(images), inception(images))


# ------------------------------------------------------------------------------------------ LaMa checkpoints
def fake_lightning_checkpoint(path):
    """A LaMa-framework checkpoint: official prefixes, extra loss/evaluator keys, pickled omegaconf objects."""
    torch.manual_seed(0)
    s2, s1, d = DiffIRS2(**TINY), DiffIRS1(**TINY), NLayerDiscriminator(ndf=8, n_layers=4)
    state = {f"generator.{k}": v for k, v in s2.state_dict().items()}
    state.update({f"generatorS1.{k}": v for k, v in s1.state_dict().items()})
    state.update({f"discriminator.{k}": v for k, v in d.state_dict().items()})
    state.update({"loss_resnet_pl.impl.conv1.weight": torch.rand(64, 3, 3, 3),
                  "val_evaluator.scores.fid.x": torch.ones(1)})
    omegaconf = types.ModuleType("omegaconf")
    DictConfig = type("DictConfig", (), {"__module__": "omegaconf", "__init__": lambda self, c: setattr(self, "c", c)})
    omegaconf.DictConfig = DictConfig
    sys.modules["omegaconf"] = omegaconf
    try:
        torch.save({"state_dict": state, "hyper_parameters": DictConfig({"generator": {"kind": "DiffIRS2"}}),
                    "epoch": 39, "pytorch-lightning_version": "1.2.9"}, path)
    finally:
        del sys.modules["omegaconf"]
    return s2.eval(), s1.eval(), d.eval()


def test_lama_checkpoint_conversion_round_trip(tmp_path):
    s2, s1, d = fake_lightning_checkpoint(tmp_path / "last.ckpt")
    content = read_lightning_checkpoint(tmp_path / "last.ckpt")  # no omegaconf installed, nothing executed
    assert content["epoch"] == 39 and type(content["hyper_parameters"]).__name__ == "omegaconf.DictConfig"
    converted = convert_lama_checkpoint(tmp_path / "last.ckpt")
    assert converted.dropped == ["loss_resnet_pl", "val_evaluator"]
    assert converted.network_g["type"] == "DiffIRS2" and converted.network_s1["type"] == "DiffIRS1"
    assert converted.network_g["inp_channels"] == 4 and converted.network_g["num_blocks"] == [1, 1, 1, 1]
    assert converted.network_g["ffn_expansion_factor"] == 1.8 and converted.network_d["n_layers"] == 4

    convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "out")])
    def restore(options, file):
        net = build_network(options).eval()
        net.load_state_dict(torch.load(tmp_path / "out" / file, weights_only=True)["params"], strict=True)
        return net

    restored = restore(converted.network_g, "net_g.pth")
    restored_s1 = restore(converted.network_s1, "net_g_S1.pth")
    restored_d = restore(converted.network_d, "net_d.pth")

    image, mask = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.7).float()
    lq, noise = prepare_inpainting_input(image, mask), torch.randn(1, 256)
    with torch.no_grad():
        assert torch.equal(restored(lq, noise=noise), s2(lq, noise=noise))
        assert torch.equal(restored_s1(lq, image), s1(lq, image))
        assert torch.equal(restored_d(image)[0], d(image)[0])

    with pytest.raises(CheckpointError, match="no 'generator"):
        convert_lama_checkpoint({"state_dict": {"discriminator.model0.0.weight": torch.zeros(1)}})

    # the files are kept: a second conversion refuses before writing any of them, unless --overwrite
    (tmp_path / "out" / "net_g.pth").unlink()
    with pytest.raises(FileExistsError, match="net_g_S1.pth exists; give --overwrite to replace it"):
        save_converted(converted, tmp_path / "out")
    with pytest.raises(SystemExit) as exited:
        convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "out")])
    assert exited.value.code == 2 and not (tmp_path / "out" / "net_g.pth").exists()
    (tmp_path / "out" / "net_d.pth").write_bytes(b"x")
    convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "out"), "--overwrite"])
    assert torch.equal(restore(converted.network_d, "net_d.pth")(image)[0], d(image)[0])
    assert (tmp_path / "out" / "net_g.pth").exists()


def test_stage_one_masked_l1_falls_on_a_fixed_batch(tmp_path):
    model = build_model(make_options(tmp_path, 1))
    batch = inpainting_batch()
    losses = []
    for it in range(1, 31):
        model.feed_data(batch)
        model.optimize_parameters(it)
        losses.append(model.get_current_log()["l_pix"])
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


@pytest.mark.parametrize("name,params_s1,params_s2", [("CelebAHQ256", 26_232_746, 26_402_474),
                                                       ("Places256", 26_232_746, 26_402_474),
                                                       ("PlacesBig", 49_313_194, 49_482_922)])
def test_official_options_build_the_official_networks(name, params_s1, params_s2):
    for stage, expected in ((1, params_s1), (2, params_s2)):
        opt = load_yaml(str(REPO / "options" / "train" / "Inpainting" / f"train_DiffIRS{stage}_{name}.yml"))
        assert opt["model_type"] == f"DiffIRInpaintS{stage}Model"
        with torch.device("meta"):
            net = build_network(dict(opt["network_g"]))
        assert net.task == "inpaint" and sum(p.numel() for p in net.parameters()) == expected
        assert opt["train"]["pixel_opt"] == {"type": "MaskedL1Loss", "weight_known": 10, "weight_missing": 0}
        assert opt["train"]["gan_opt"]["loss_weight"] == 10 and opt["train"]["gan_opt"]["gp_coef"] == 0.001
        assert opt["train"]["feature_matching_opt"]["loss_weight"] == 100
        assert opt["train"]["resnet_pl_opt"]["loss_weight"] == 30 and opt["train"]["ema_decay"] == 0
        assert (opt["train"]["optim_g"]["lr"], opt["train"]["optim_d"]["lr"]) == (2e-4, 1e-4)
