"""Data side of two-stage training: HR-only bicubic dataset, Real-ESRGAN degradation on CPU,
progressive deblurring schedule, dataset checks, and the full-size option files."""
from __future__ import annotations

import glob
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

import diffir  # noqa: F401  (registers everything; must precede basicsr imports)
from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.utils import img2tensor, set_random_seed
from basicsr.utils.img_process_util import USMSharp
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from diffir.data.checks import MAX_LISTED, DatasetError, check_dataset_options
from diffir.data.degradation import REQUIRED_KEYS, RealESRGANDegradation
from diffir.data.progressive import ProgressiveSchedule, crop_batch
from diffir.options import load_yaml, parse_options

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 BGR image with structure at several scales (bicubic of it is not trivial)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3)).astype(np.float32)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(folder, names, height, width, seed=0):
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(osp.join(folder, name), smooth_image(height, width, seed + i))


# ------------------------------------------------------------------------------ HRBicubicDataset
def hr_opt(folder, phase, **extra):
    return {"name": "hr", "type": "HRBicubicDataset", "dataroot_gt": str(folder), "io_backend": {"type": "disk"},
            "scale": 4, "phase": phase, **extra}


def matlab_lr_8bit(gt_chw: torch.Tensor, scale: int) -> torch.Tensor:
    lr = imresize(gt_chw, 1 / scale)  # basicsr's port of MATLAB's bicubic imresize
    return torch.clamp(torch.round(lr * 255), 0, 255) / 255


def test_hr_bicubic_train_crop_is_aligned_and_lr_is_matlab_bicubic(tmp_path):
    write_images(tmp_path, ["a.png"], 70, 66)
    full = img2tensor(cv2.imread(str(tmp_path / "a.png")).astype(np.float32) / 255, bgr2rgb=True)
    dataset = build_dataset(hr_opt(tmp_path, "train", gt_size=32, use_hflip=False, use_rot=False))
    offsets = set()
    for _ in range(6):
        item = dataset[0]
        assert item["gt"].shape == (3, 32, 32) and item["lq"].shape == (3, 8, 8)
        assert item["gt"].dtype == item["lq"].dtype == torch.float32
        assert item["lq_path"] == item["gt_path"] == str(tmp_path / "a.png")
        torch.testing.assert_close(item["lq"], matlab_lr_8bit(item["gt"], 4), atol=1e-6, rtol=0)
        # the GT patch is the image at an offset on the 4-pixel grid
        matches = [(top, left) for top in range(0, 70 - 31) for left in range(0, 66 - 31)
                   if torch.equal(full[:, top:top + 32, left:left + 32], item["gt"])]
        assert len(matches) == 1 and matches[0][0] % 4 == 0 and matches[0][1] % 4 == 0
        offsets.add(matches[0])
    assert len(offsets) > 1  # the crop is random


def test_hr_bicubic_augmented_pairs_stay_consistent(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"], 48, 48)
    dataset = build_dataset(hr_opt(tmp_path, "train", gt_size=32, use_hflip=True, use_rot=True))
    for index in (0, 1, 0, 1):
        item = dataset[index]
        torch.testing.assert_close(item["lq"], matlab_lr_8bit(item["gt"], 4), atol=1e-6, rtol=0)


def test_hr_bicubic_val_mod_crops_the_whole_image(tmp_path):
    write_images(tmp_path, ["a.png", "b.png", "c.png"], 70, 66)
    (tmp_path / "meta.txt").write_text("c.png (70,66,3)\na.png\n")
    dataset = build_dataset(hr_opt(tmp_path, "val", meta_info=str(tmp_path / "meta.txt")))
    assert [osp.basename(p) for p in dataset.paths] == ["c.png", "a.png"]
    item = dataset[0]
    assert item["gt"].shape == (3, 68, 64) and item["lq"].shape == (3, 17, 16)
    torch.testing.assert_close(item["lq"], matlab_lr_8bit(item["gt"], 4), atol=1e-6, rtol=0)
    assert 0 <= item["lq"].min() and item["lq"].max() <= 1


def test_hr_bicubic_rejects_bad_patch_size_and_names_unreadable_files(tmp_path):
    write_images(tmp_path, ["a.png"], 40, 40)
    with pytest.raises(ValueError, match="gt_size 30 must be a multiple of scale 4"):
        build_dataset(hr_opt(tmp_path, "train", gt_size=30))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    dataset = build_dataset(hr_opt(tmp_path, "val"))
    with pytest.raises(OSError, match="broken.png"):
        dataset[dataset.paths.index(str(tmp_path / "broken.png"))]


# ------------------------------------------------------------------------- Real-ESRGAN degradation
OFFICIAL_DEGRADATION = dict(
    resize_prob=[0.2, 0.7, 0.1], resize_range=[0.15, 1.5], gaussian_noise_prob=0.5, noise_range=[1, 30],
    poisson_scale_range=[0.05, 3], gray_noise_prob=0.4, jpeg_range=[30, 95], second_blur_prob=0.8,
    resize_prob2=[0.3, 0.4, 0.3], resize_range2=[0.3, 1.2], gaussian_noise_prob2=0.5, noise_range2=[1, 25],
    poisson_scale_range2=[0.05, 2.5], gray_noise_prob2=0.4, jpeg_range2=[30, 95])


def gaussian_kernels(batch: int, sigma: float = 1.5, size: int = 21) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2))
    return (kernel / kernel.sum()).expand(batch, size, size).clone()


def degradation_batch(gt: torch.Tensor) -> dict:
    kernels = gaussian_kernels(gt.shape[0])
    return {"gt": gt, "kernel1": kernels, "kernel2": kernels, "sinc_kernel": kernels}


def constant_batch(values) -> torch.Tensor:
    """GT images of one grey level each, so every sample can be recognised after cropping."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 96, 96).clone()


def test_degradation_shapes_values_and_pool_on_cpu():
    set_random_seed(0)
    degrade = RealESRGANDegradation({**OFFICIAL_DEGRADATION, "scale": 4, "gt_size": 32, "queue_size": 4},
                                    torch.device("cpu"))
    seen = set()
    for call in range(5):
        values = [round((40 + 20 * call + 10 * j) / 255, 6) for j in range(2)]
        lq, gt, gt_usm = degrade(degradation_batch(constant_batch(values)))
        assert lq.shape == (2, 3, 8, 8) and gt.shape == gt_usm.shape == (2, 3, 32, 32)
        assert lq.device.type == gt.device.type == "cpu" and lq.is_contiguous()
        assert 0 <= lq.min() and lq.max() <= 1
        torch.testing.assert_close(lq * 255, torch.round(lq * 255), atol=1e-4, rtol=0)  # 8-bit levels
        returned = {round(v, 6) for v in gt[:, 0, 0, 0].tolist()}
        assert all(torch.all(gt[i] == gt[i, 0, 0, 0]) for i in range(2))  # whole samples, not mixtures
        if call < 2:  # pool filling: the batch passes through
            assert returned == set(values)
            # LQ is a degraded version of that same grey level
            for i in range(2):
                assert abs(lq[i].mean().item() - gt[i, 0, 0, 0].item()) < 0.15
        else:  # pool full: the batch is swapped for earlier pairs
            assert returned <= seen and not returned & set(values)
        seen |= set(values)


def test_degradation_usm_target_and_option_errors():
    set_random_seed(1)
    degrade = RealESRGANDegradation({**OFFICIAL_DEGRADATION, "scale": 2, "gt_size": 32, "queue_size": 0}, "cpu")
    lq, gt, gt_usm = degrade(degradation_batch(torch.rand(3, 3, 96, 96)))
    assert lq.shape == (3, 3, 16, 16)
    torch.testing.assert_close(gt_usm, USMSharp()(gt))
    assert (gt_usm - gt).abs().max() > 0.01
    with pytest.raises(ValueError, match="queue_size 4 must be a multiple of the training batch size per process"):
        RealESRGANDegradation({**OFFICIAL_DEGRADATION, "scale": 4, "gt_size": 32, "queue_size": 4}, "cpu")(
            degradation_batch(torch.rand(3, 3, 96, 96)))
    with pytest.raises(ValueError,
                       match=r"too small for the degradation: the first resize can shrink them to 7 pixels"):
        degrade(degradation_batch(torch.rand(1, 3, 48, 48)))
    opt = {**OFFICIAL_DEGRADATION, "scale": 4}
    del opt["jpeg_range2"]
    with pytest.raises(KeyError, match=r"\['gt_size', 'jpeg_range2'\]"):
        RealESRGANDegradation(opt, "cpu")


def test_degradation_sharpens_gt_first_when_gt_usm_is_set():
    set_random_seed(2)
    opt = {**OFFICIAL_DEGRADATION, "scale": 1, "gt_size": 96, "queue_size": 0, "gt_usm": True}
    gt_in = torch.rand(1, 3, 96, 96)
    _, gt, _ = RealESRGANDegradation(opt, "cpu")(degradation_batch(gt_in))
    torch.testing.assert_close(gt, USMSharp()(gt_in))  # gt_size = image size: the crop is the whole image


# ------------------------------------------------------------------------------ progressive schedule
def progressive_opt(**overrides):
    opt = {"mini_batch_sizes": [4, 2, 1], "iters": [2, 3, 1], "gt_sizes": [16, 24, 32], "gt_size": 32,
           "batch_size_per_gpu": 4}
    return {**opt, **overrides}


def test_progressive_schedule_stages():
    schedule = ProgressiveSchedule.from_options(progressive_opt(), scale=2)
    assert schedule.total_iter == 6
    expected = {1: (4, 16), 2: (4, 16), 3: (2, 24), 5: (2, 24), 6: (1, 32), 50: (1, 32)}
    assert {it: schedule.at(it) for it in expected} == expected
    assert ProgressiveSchedule.from_options({"gt_size": 32, "batch_size_per_gpu": 4}) is None


def test_progressive_crop_keeps_first_samples_and_aligns_lq_with_gt():
    torch.manual_seed(0)
    schedule = ProgressiveSchedule.from_options({**progressive_opt(), "scale": 2})
    lq = torch.rand(4, 3, 16, 16)
    gt = lq.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # GT pixel (y, x) = LQ pixel (y//2, x//2)
    windows = set()
    for _ in range(8):
        lq_out, gt_out = schedule.crop(lq, gt, current_iter=3)
        assert lq_out.shape == (2, 3, 12, 12) and gt_out.shape == (2, 3, 24, 24)
        torch.testing.assert_close(gt_out, lq_out.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2))
        found = [(t, left) for t in range(5) for left in range(5)
                 if torch.equal(lq[:2, :, t:t + 12, left:left + 12], lq_out)]
        assert len(found) == 1  # one common window for both samples, taken from the first two
        windows.add(found[0])
    assert len(windows) > 1
    lq_out, gt_out = crop_batch(lq, gt, 4, 32, scale=2)  # last stage: the loaded batch unchanged
    assert torch.equal(lq_out, lq) and torch.equal(gt_out, gt)


@pytest.mark.parametrize("overrides, message", [
    ({"iters": [2, 3]}, "same length"),
    ({"gt_sizes": [16, 24, 40]}, r"must not exceed gt_size 32.*\[40\]"),
    ({"batch_size_per_gpu": 2}, "batch_size_per_gpu 2 is smaller than the largest mini batch 4"),
    ({"iters": [2, 0, 1]}, "iters must hold positive integers"),
    ({"gt_sizes": [16, 25, 32]}, r"patch sizes \[25\] are not multiples of scale 2"),
    ({"gt_sizes": None}, r"lacks \['gt_sizes'\]"),
])
def test_progressive_schedule_rejects_bad_options(overrides, message):
    with pytest.raises(ValueError, match=message):
        ProgressiveSchedule.from_options(progressive_opt(**overrides), scale=2)


# ------------------------------------------------------------------------------------ dataset checks
def paired_opt(tmp_path, **extra):
    return {"name": "pairs", "type": "PairedImageDataset", "dataroot_gt": str(tmp_path / "gt"),
            "dataroot_lq": str(tmp_path / "lq"), "io_backend": {"type": "disk"}, **extra}


def make_pairs(tmp_path, names, gt_hw=(64, 64), lq_hw=(16, 16), lq_names=None):
    write_images(tmp_path / "gt", names, *gt_hw)
    write_images(tmp_path / "lq", lq_names if lq_names is not None else names, *lq_hw)


def test_check_accepts_good_datasets(tmp_path):
    make_pairs(tmp_path, ["a.png", "b.png"])
    check_dataset_options(paired_opt(tmp_path, gt_size=64), 4, "train")
    check_dataset_options({"type": "SingleImageDataset", "dataroot_lq": str(tmp_path / "lq"),
                           "io_backend": {"type": "disk"}}, 4, "test")
    check_dataset_options(hr_opt(tmp_path / "gt", "train", gt_size=64), 4, "train")
    # types it does not know are not checked at all
    check_dataset_options({"type": "SomeOtherDataset", "dataroot_gt": "/does/not/exist"}, 4, "train")
    assert issubclass(DatasetError, ValueError)


def test_check_missing_key_missing_path_and_empty_folder(tmp_path):
    make_pairs(tmp_path, ["a.png"])
    opt = paired_opt(tmp_path)
    del opt["dataroot_lq"]
    label = r"dataset 'pairs' \(PairedImageDataset, train\)"
    with pytest.raises(DatasetError, match=label + ": missing option 'dataroot_lq'"):
        check_dataset_options(opt, 4, "train")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=f"dataroot_gt '{missing}' does not exist"):
        check_dataset_options({**paired_opt(tmp_path), "dataroot_gt": missing}, 4, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="dataroot_gt '.*empty' is empty"):
        check_dataset_options(hr_opt(tmp_path / "empty", "val"), 4, "val")


def test_check_name_mismatch_lists_a_few_names_on_each_side(tmp_path):
    gt_names = [f"img{i:02d}.png" for i in range(9)]
    make_pairs(tmp_path, gt_names, lq_names=["img00.png", "img01.png", "extra.png"])
    with pytest.raises(DatasetError) as err:
        check_dataset_options(paired_opt(tmp_path), 4, "val")
    message = str(err.value)
    assert "7 GT image(s) without LQ" in message and "1 LQ image(s) without GT" in message
    assert "img02.png" in message and "extra.png" in message
    assert sum(f"img{i:02d}.png" in message for i in range(2, 9)) == MAX_LISTED
    assert "(and 2 more)" in message


def test_check_honours_filename_tmpl_and_meta_info_file(tmp_path):
    make_pairs(tmp_path, ["a.png", "b.png"], lq_names=["ax4.png", "bx4.png"])
    check_dataset_options(paired_opt(tmp_path, filename_tmpl="{}x4"), 4, "val")
    with pytest.raises(DatasetError, match="2 GT image.*without LQ"):
        check_dataset_options(paired_opt(tmp_path), 4, "val")
    meta = tmp_path / "meta.txt"
    meta.write_text("a.png (64,64,3)\nc.png (64,64,3)\n")
    with pytest.raises(DatasetError, match=r"1 GT: .*c\.png; 1 LQ: .*cx4\.png"):
        check_dataset_options(paired_opt(tmp_path, filename_tmpl="{}x4", meta_info_file=str(meta)), 4, "val")
    with pytest.raises(DatasetError, match="meta_info_file '.*nope.txt' does not exist"):
        check_dataset_options(paired_opt(tmp_path, meta_info_file=str(tmp_path / "nope.txt")), 4, "val")


def test_check_sizes_must_match_the_scale(tmp_path):
    make_pairs(tmp_path, ["a.png", "b.png"], gt_hw=(65, 66), lq_hw=(16, 16))
    # evaluation crops GT to LQ x scale: up to scale - 1 extra GT pixels are fine
    check_dataset_options(paired_opt(tmp_path), 4, "val")
    with pytest.raises(DatasetError, match=r"do not match scale 4 for 2 pair\(s\): a\.png: GT 66x65, LQ 16x16 "
                                           r"\(expected LQ 16x16\)"):
        check_dataset_options(paired_opt(tmp_path), 4, "train")
    with pytest.raises(DatasetError, match=r"GT 66x65, LQ 16x16 \(expected LQ 33x32\)"):
        check_dataset_options(paired_opt(tmp_path), 2, "test")
    # without arguments the scale and phase are those parse_options puts in the dataset's options
    check_dataset_options({**paired_opt(tmp_path), "scale": 4, "phase": "val"})
    with pytest.raises(DatasetError, match=r"\(expected LQ 16x16\)"):
        check_dataset_options({**paired_opt(tmp_path), "scale": 4, "phase": "train"})


def test_check_names_unreadable_and_too_small_images(tmp_path):
    make_pairs(tmp_path, ["a.png", "b.png"])
    (tmp_path / "lq" / "b.png").write_bytes(b"\x89PNG but truncated")
    with pytest.raises(DatasetError, match=r"cannot read 1 image file\(s\): .*lq/b\.png"):
        check_dataset_options(paired_opt(tmp_path), 4, "val")
    with pytest.raises(DatasetError, match=r"2 image\(s\) are smaller than gt_size 96 on a side: a\.png \(64x64\)"):
        check_dataset_options(hr_opt(tmp_path / "gt", "train", gt_size=96), 4, "train")
    make_pairs(tmp_path / "small", ["c.png"])
    with pytest.raises(DatasetError, match=r"1 GT image\(s\) are smaller than gt_size 96 on a side: c\.png \(64x64\)"):
        check_dataset_options(paired_opt(tmp_path / "small", gt_size=96), 4, "train")


def test_check_realesrgan_and_lmdb_datasets(tmp_path):
    write_images(tmp_path / "hr" / "sub", ["a.png"], 32, 32)
    opt = {"name": "df2k", "type": "RealESRGANDataset", "dataroot_gt": str(tmp_path / "hr"),
           "io_backend": {"type": "disk"}}
    with pytest.raises(DatasetError, match="missing option 'meta_info'"):
        check_dataset_options(opt, 4, "train")
    (tmp_path / "meta.txt").write_text("sub/a.png\nsub/gone.png\n")
    with pytest.raises(DatasetError, match=r"1 of the 2 images listed in meta_info .* do not exist: .*sub/gone\.png"):
        check_dataset_options({**opt, "meta_info": str(tmp_path / "meta.txt")}, 4, "train")
    lmdb = {"name": "lmdb", "type": "PairedImageDataset", "dataroot_gt": str(tmp_path / "gt.lmdb"),
            "dataroot_lq": str(tmp_path / "lq.lmdb"), "io_backend": {"type": "lmdb"}}
    with pytest.raises(DatasetError, match="dataroot_gt '.*gt.lmdb' does not exist"):
        check_dataset_options(lmdb, 4, "train")
    (tmp_path / "gt.lmdb").mkdir()
    (tmp_path / "lq.lmdb").mkdir()
    check_dataset_options(lmdb, 4, "train")


# ------------------------------------------------------------------------------------- option files
OPTION_FILES = sorted(glob.glob(osp.join(REPO, "options", "**", "*.yml"), recursive=True))
# the SR / real-world SR / deblurring recipes (inpainting's are checked in test_inpainting.py)
FULL_SIZE = [f for f in OPTION_FILES if osp.relpath(f, REPO).split(os.sep)[1] in ("train", "test")
             and "Inpainting" not in f]

# unique parameter counts of the official networks (paper-facts.md, measured on the official code)
OFFICIAL_PARAMS = {("sr", 4): (24_801_478, 24_971_206), ("sr", 2): (24_811_846, 24_981_574),
                   ("sr", 1): (24_853_318, 25_023_046), ("deblur", 1): (26_742_206, 26_911_934)}
STAGE_TWO_ONLY = {"n_denoise_res", "linear_start", "linear_end", "timesteps", "use_checkpoint"}


def rel(path):
    return osp.relpath(path, REPO)


def parsed(path, tmp_path):
    is_train = "train" in load_yaml(path)  # test option files have no train section
    opt, _ = parse_options(is_train, argv=["-opt", path, "--root", str(tmp_path)])
    return opt


def build_on_meta(net_opt):
    """Build a network without allocating or initialising its weights (fast for the full-size nets)."""
    try:
        with torch.device("meta"):
            return build_network(dict(net_opt))
    except RuntimeError as err:  # some basicsr archs call .item() while building (e.g. SwinIR)
        if "meta" not in str(err):
            raise
        return build_network(dict(net_opt))


def test_option_files_exist_for_every_official_configuration():
    names = {rel(f) for f in FULL_SIZE}
    expected = {f"options/train/SR/train_DiffIRS{s}_x{x}.yml" for s in ("1", "2", "2_GAN") for x in (2, 4)}
    expected |= {f"options/train/RealSR/{f}_x{x}{v}.yml" for x in (1, 2, 4) for f, v in
                 [("train_DiffIRS1", ""), ("train_DiffIRS2", ""), ("train_DiffIRS2_GAN", ""),
                  ("train_DiffIRS2_GAN", "_V2"), ("finetune_DiffIRS2_GAN", "_V2")]}
    expected |= {"options/train/Deblur/train_DiffIRS1.yml", "options/train/Deblur/train_DiffIRS2.yml"}
    expected |= {f.replace(".yml", "_1gpu.yml") for f in
                 ("options/train/SR/train_DiffIRS1_x4.yml", "options/train/RealSR/train_DiffIRS1_x4.yml",
                  "options/train/Deblur/train_DiffIRS1.yml")}
    expected |= {"options/test/Deblur/test_DiffIRS2.yml", "options/test/SR/test_DiffIRS2_x4.yml",
                 "options/test/RealSR/test_DiffIRS2_GAN_x4.yml"}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", OPTION_FILES, ids=rel)
def test_option_file_parses_and_names_registered_components(path, tmp_path):
    opt = parsed(path, tmp_path)
    assert opt["model_type"] in MODEL_REGISTRY, f"model_type {opt['model_type']!r} is not a registered model"
    for dataset in opt["datasets"].values():
        DATASET_REGISTRY.get(dataset["type"])  # raises KeyError if unknown (with basicsr's suffix fallback)
    for key, loss in opt.get("train", {}).items():
        if key.endswith("_opt") and isinstance(loss, dict) and "type" in loss:
            LOSS_REGISTRY.get(loss["type"])
    for metric in ((opt.get("val") or {}).get("metrics") or {}).values():
        METRIC_REGISTRY.get(metric["type"])
    for key in ("network_g", "network_S1", "network_d"):
        if key in opt:
            build_on_meta(opt[key])


@pytest.mark.parametrize("path", FULL_SIZE, ids=rel)
def test_full_size_option_file_is_consistent(path, tmp_path):
    opt = parsed(path, tmp_path)
    task = "deblur" if "/Deblur/" in path else "sr"
    scale = opt["scale"]
    net_g = build_on_meta(opt["network_g"])
    stage_two = opt["network_g"]["type"] == "DiffIRS2"
    count = sum(p.numel() for p in net_g.parameters())
    assert count == OFFICIAL_PARAMS[(task, scale)][int(stage_two)]
    assert net_g.task == task and net_g.scale == scale
    window = opt["val"]["window_size"]
    assert window % net_g.size_multiple == 0
    for metric in opt["val"]["metrics"].values():  # the convention stated in the file
        assert metric["crop_border"] == (scale if task == "sr" else 0)
        assert metric["test_y_channel"] is (task == "sr")
    if not opt["is_train"]:
        return

    if "network_S1" in opt:
        stage_one = {k: v for k, v in opt["network_g"].items() if k not in STAGE_TWO_ONLY}
        assert opt["network_S1"] == {**stage_one, "type": "DiffIRS1"}
        assert opt["path"]["pretrain_network_S1"] and opt["train"]["kd_opt"]["temperature"] == 0.15
    train_set = opt["datasets"]["train"]
    if opt.get("high_order_degradation"):
        assert train_set["type"] == "RealESRGANDataset"
        assert not [k for k in REQUIRED_KEYS if k not in opt]
        assert opt["queue_size"] % train_set["batch_size_per_gpu"] == 0
    schedule = ProgressiveSchedule.from_options(train_set)
    if task == "deblur":
        assert schedule.total_iter == opt["train"]["total_iter"]
        assert schedule.gt_size == max(schedule.gt_sizes) == 512
    if path.endswith("_1gpu.yml"):
        official = parsed(path.replace("_1gpu.yml", ".yml"), tmp_path)
        assert opt["network_g"]["use_checkpoint"] is True and opt["train"]["grad_accum_steps"] == 8
        assert train_set["batch_size_per_gpu"] == 8 * official["datasets"]["train"]["batch_size_per_gpu"]
        if schedule is not None:
            assert [8 * m for m in official["datasets"]["train"]["mini_batch_sizes"]] == list(schedule.mini_batch_sizes)
        for key in ("optim_g", "optim_d", "scheduler", "total_iter", "encoder_iter", "lr_sr", "lr_encoder"):
            assert opt["train"].get(key) == official["train"].get(key), key


# the official hyperparameters (paper-facts.md section 2): file -> {dotted key: value}
OFFICIAL = {
    "train/SR/train_DiffIRS1_x4": {"train.total_iter": 1_000_000, "train.optim_g.lr": 2e-4,
                                   "train.scheduler.milestones": [500_000, 700_000], "train.ema_decay": 0.999,
                                   "datasets.train.batch_size_per_gpu": 8, "datasets.train.gt_size": 256,
                                   "datasets.train.dataset_enlarge_ratio": 100},
    "train/SR/train_DiffIRS2_x2": {"train.total_iter": 1_000_000, "train.encoder_iter": 0,
                                   "train.scheduler.milestones": [500_000, 700_000]},
    "train/SR/train_DiffIRS2_GAN_x4": {"train.total_iter": 400_000, "train.optim_g.lr": 2e-4,
                                       "train.optim_d.lr": 1e-4, "train.scheduler.milestones": [200_000],
                                       "train.gan_opt.loss_weight": 1.0, "network_d.num_feat": 64},
    "train/RealSR/train_DiffIRS1_x2": {"train.ema_decay": 0, "datasets.train.batch_size_per_gpu": 9,
                                       "queue_size": 180, "datasets.train.use_rot": False},
    "train/RealSR/train_DiffIRS2_x4": {"train.encoder_iter": 100_000, "train.lr_decay_encoder": 60_000,
                                       "train.gamma_encoder": 0.1, "train.lr_decay_sr": 600_000,
                                       "train.ema_decay": 0.999},
    "train/RealSR/train_DiffIRS2_GAN_x4_V2": {"l1_gt_usm": True, "percep_gt_usm": True, "gan_gt_usm": False,
                                              "train.lr_sr": 1e-4, "train.lr_decay_sr": 300_000,
                                              "train.total_iter": 400_000, "train.optim_d.lr": 1e-4},
    "train/RealSR/finetune_DiffIRS2_GAN_x1_V2": {"path.strict_load_d": True, "val.window_size": 32},
    "train/Deblur/train_DiffIRS1": {"train.total_iter": 300_000, "train.optim_g.betas": [0.9, 0.999],
                                    "train.scheduler.type": "CosineAnnealingRestartCyclicLR",
                                    "train.scheduler.periods": [92_000, 208_000],
                                    "train.scheduler.eta_mins": [0.000285, 0.000001],
                                    "datasets.train.mini_batch_sizes": [8, 4, 2, 2, 1, 1],
                                    "datasets.train.gt_sizes": [192, 256, 320, 384, 464, 512]},
    "train/Deblur/train_DiffIRS2": {"train.total_iter": 400_000, "train.lr_decay_sr": 80_000,
                                    "train.scheduler.milestones": [300_000],
                                    "datasets.train.iters": [150_000, 60_000, 50_000, 60_000, 40_000, 40_000]},
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_hyperparameters(name):
    opt = load_yaml(osp.join(REPO, "options", f"{name}.yml"))
    for dotted, expected in OFFICIAL[name].items():
        value = opt
        for key in dotted.split("."):
            value = value[key]
        assert value == expected, dotted


# ------------------------------------------------------------------------- scripts/prepare_datasets.py
def load_prepare_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_datasets", osp.join(REPO, "scripts", "prepare_datasets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_script_gopro_patches_and_bicubic_lr(tmp_path):
    prepare = load_prepare_script()
    # GoPro frames are 1280 x 720: windows every 256 pixels plus one flush with the far edge
    assert prepare.crop_starts(720, 512, 256) == [0, 208]
    assert prepare.crop_starts(1280, 512, 256) == [0, 256, 512, 768]
    assert prepare.crop_starts(100, 128, 64) == []
    for split in ("train", "test"):
        write_images(tmp_path / split / "input", ["f1.png"], 200, 300, seed=3)
        write_images(tmp_path / split / "target", ["f1.png"], 200, 300, seed=4)
    prepare.main(["--workers", "1", "gopro", "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"),
                  "--output", str(tmp_path / "out"), "--patch", "128", "--overlap", "64", "--val_size", "64"])
    crops = sorted(os.listdir(tmp_path / "out" / "train_crops" / "target_crops"))
    assert len(crops) == 3 * 4 and crops == sorted(os.listdir(tmp_path / "out" / "train_crops" / "input_crops"))
    sharp = cv2.imread(str(tmp_path / "train" / "target" / "f1.png"))
    last = cv2.imread(str(tmp_path / "out" / "train_crops" / "target_crops" / "f1-12.png"))
    assert np.array_equal(last, sharp[72:200, 172:300])
    val = cv2.imread(str(tmp_path / "out" / "val" / "input_crops" / "f1.png"))
    assert np.array_equal(val, cv2.imread(str(tmp_path / "test" / "input" / "f1.png"))[68:132, 118:182])

    write_images(tmp_path / "hr", ["a.png"], 70, 66)
    prepare.main(["--workers", "1", "bicubic", "--input", str(tmp_path / "hr"), "--output", str(tmp_path / "x4"),
                  "--scale", "4"])
    hr = cv2.imread(str(tmp_path / "hr" / "a.png")).astype(np.float32) / 255
    lr = cv2.imread(str(tmp_path / "x4" / "a.png")).astype(np.float32) / 255
    assert lr.shape == (17, 16, 3)
    np.testing.assert_allclose(lr, imresize(hr[:68, :64], 1 / 4).clip(0, 1), atol=0.5 / 255 + 1e-6)
    check_dataset_options({"name": "x4", "type": "PairedImageDataset", "dataroot_gt": str(tmp_path / "hr"),
                           "dataroot_lq": str(tmp_path / "x4"), "io_backend": {"type": "disk"}}, 4, "test")

    meta = tmp_path / "meta" / "x4.txt"  # its folder does not exist yet
    prepare.main(["meta", "--root", str(tmp_path), "--folders", "hr", "x4", "--output", str(meta)])
    assert meta.read_text() == "hr/a.png\nx4/a.png\n"


def test_atomic_writes_keep_the_old_file_when_a_write_fails(tmp_path):
    from diffir.utils.atomic import atomic_torch_save, atomic_write_bytes

    target = tmp_path / "new" / "x.pth"
    atomic_torch_save({"w": torch.ones(2)}, target)  # creates the folder
    with pytest.raises(Exception, match="pickle"):
        atomic_torch_save({"w": torch.zeros(2), "f": lambda: 0}, target)  # fails half-way through
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(target.parent) == ["x.pth"]
    atomic_write_bytes(target, b"raw")
    assert target.read_bytes() == b"raw" and os.listdir(target.parent) == ["x.pth"]
