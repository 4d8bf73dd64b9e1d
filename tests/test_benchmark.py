"""The benchmark suite: metrics against hand-computed values, CSV / Markdown output, LQ-only sets,
LPIPS weights handling, the FID hook and the stochasticity report. Tiny random networks, one CPU thread."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from diffir import DiffIRS2
from diffir.benchmark import Benchmark, BenchmarkSet, LPIPSMetric, MissingWeightsError, find_paper_set, stochasticity
from diffir.benchmark import suite
from diffir.benchmark.cli import main as benchmark_main
from diffir.metrics import to_uint8_rgb
from basicsr.utils.matlab_functions import imresize  # after diffir, which makes basicsr importable
from diffir.image_io import read_image, write_image
from diffir.restorer import Restorer

TINY = dict(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1], scale=4)
# BT.601 luma weights of basicsr's bgr2ycbcr (MATLAB), per 8-bit RGB unit
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def y_psnr(a: np.ndarray, b: np.ndarray, crop: int) -> float:
    """PSNR on the Y channel written out: Y = 16 + 65.481/255 R + 128.553/255 G + 24.966/255 B."""
    a, b = (x[crop:-crop, crop:-crop].astype(np.float64) @ Y_WEIGHTS for x in (a, b))
    return 10 * math.log10(255 ** 2 / np.mean((a - b) ** 2))


def test_psnr_of_a_known_pair_matches_the_hand_computed_value(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(30, 200, (40, 48, 3), dtype=np.uint8)
    restored = gt + np.uint8(4)  # every pixel 4 levels brighter in every channel ...
    restored[:4] += 16  # ... and the top 4 rows (inside the SR crop border) 20 brighter
    for folder, image in (("gt", gt), ("out", restored)):
        write_image(tmp_path / folder / "baby.png", image)

    assert benchmark_main(["--restored", str(tmp_path / "out"), "--gt", str(tmp_path / "gt"), "--name", "Set14",
                           "--task", "sr", "-s", "4", "--metrics", "psnr", "-o", str(tmp_path / "sr")]) == 0
    # SR protocol: Y channel, 4-pixel border cropped, so only the +4 error counts: dY = 4 * 219 / 255
    expected_sr = 20 * math.log10(255 / (4 * 219 / 255))
    rows = read_csv(tmp_path / "sr" / "Set14" / "metrics.csv")
    assert [r["image"] for r in rows] == ["baby", "mean"]
    assert float(rows[0]["psnr"]) == pytest.approx(expected_sr, abs=1e-3)
    assert float(rows[1]["psnr"]) == pytest.approx(expected_sr, abs=1e-3)
    markdown = (tmp_path / "sr" / "results.md").read_text()
    # the outputs are named by their folder; without the LQ images there is no bicubic baseline
    assert f"| Set14 | 1 | {tmp_path / 'out'} | {expected_sr:.2f} |\n| Set14 |  | DiffIR paper (Table 2) | 27.73 |" \
        in markdown
    assert "baseline" not in markdown

    assert benchmark_main(["--restored", str(tmp_path / "out"), "--gt", str(tmp_path / "gt"), "--name", "GoPro",
                           "--task", "deblur", "--metrics", "psnr", "-o", str(tmp_path / "deblur")]) == 0
    # deblurring protocol: RGB, nothing cropped: 4 of 40 rows have error 20, the rest 4
    expected_rgb = 10 * math.log10(255 ** 2 / ((4 * 20 ** 2 + 36 * 4 ** 2) / 40))
    summary = read_csv(tmp_path / "deblur" / "summary.csv")
    assert [(r["set"], r["method"], r["metric"]) for r in summary] == [
        ("GoPro", str(tmp_path / "out"), "psnr"), ("GoPro", "DiffIR paper (Table 4)", "psnr")]
    assert float(summary[0]["value"]) == pytest.approx(expected_rgb, abs=1e-6)
    assert float(summary[1]["value"]) == 33.2


def test_benchmark_restores_scores_and_saves_crops(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    for i in range(2):
        hr = np.clip(rng.normal(128, 40, (32, 40, 3)), 0, 255).astype(np.uint8)
        write_image(tmp_path / "HR" / f"im{i}.png", hr)
        write_image(tmp_path / "LR" / f"im{i}x4.png", hr[::4, ::4])
    torch.manual_seed(0)
    torch.save({"params_ema": DiffIRS2(**TINY).state_dict()}, tmp_path / "model.pth")
    listings, list_samples = [], suite.list_samples
    monkeypatch.setattr(suite, "list_samples", lambda *args: listings.append(args) or list_samples(*args))

    code = benchmark_main(["-m", str(tmp_path / "model.pth"), "--lq", str(tmp_path / "LR"), "--gt",
                           str(tmp_path / "HR"), "--filename-tmpl", "{}x4", "--name", "Urban100", "--metrics",
                           "psnr,ssim", "--crops", "--crop-size", "24", "--seeds", "3", "-o", str(tmp_path / "res"),
                           "--device", "cpu"])

    assert code == 0
    assert len(listings) == 1  # the stochasticity report (--seeds) reuses the set's samples
    rows = read_csv(tmp_path / "res" / "Urban100" / "metrics.csv")
    assert [r["image"] for r in rows] == ["im0", "im1", "mean"]
    for row in rows[:2]:  # the CSV holds the PSNR of the saved output against the GT
        output = read_image(tmp_path / "res" / "Urban100" / f"{row['image']}.png")
        assert output.shape == (32, 40, 3)
        gt = read_image(tmp_path / "HR" / f"{row['image']}.png")
        assert float(row["psnr"]) == pytest.approx(y_psnr(output, gt, 4), abs=1e-3)
        assert 0 < float(row["ssim"]) < 1
    assert float(rows[2]["psnr"]) == pytest.approx((float(rows[0]["psnr"]) + float(rows[1]["psnr"])) / 2, abs=1e-5)
    crop = read_image(tmp_path / "res" / "Urban100" / "crops" / "im0.png")
    assert crop.shape == (24, 3 * 24 + 2 * 4, 3)  # LQ | output | GT with 4-pixel gaps
    markdown = (tmp_path / "res" / "results.md").read_text()
    assert "| Urban100 |  | DiffIR paper (Table 2) | 26.05 |  |" in markdown and "## Stochasticity" in markdown
    # the bicubic baseline: MATLAB bicubic x4 of each LR image, scored like the outputs
    bicubic = [y_psnr(to_uint8_rgb(np.clip(imresize(read_image(tmp_path / "LR" / f"im{i}x4.png") / 255.0, 4), 0, 1)),
                      read_image(tmp_path / "HR" / f"im{i}.png"), 4) for i in range(2)]
    summary = {(r["method"], r["metric"]): float(r["value"]) for r in read_csv(tmp_path / "res" / "summary.csv")}
    assert summary[("bicubic (baseline)", "psnr")] == pytest.approx(np.mean(bicubic), abs=1e-3)
    assert summary[(str(tmp_path / "model.pth"), "psnr")] == pytest.approx(float(rows[2]["psnr"]), abs=1e-5)
    assert (f"| Urban100 | 2 | bicubic (baseline) | {np.mean(bicubic):.2f} |" in markdown and
            f"| Urban100 | 2 | {tmp_path / 'model.pth'} | {float(rows[2]['psnr']):.2f} |" in markdown)


def test_lq_only_set_writes_outputs_without_metrics(tmp_path):
    write_image(tmp_path / "LR" / "a.png", np.full((9, 11, 3), 90, np.uint8))
    torch.manual_seed(0)
    torch.save({"params": DiffIRS2(**TINY).state_dict()}, tmp_path / "model.pth")
    assert benchmark_main(["-m", str(tmp_path / "model.pth"), "--lq", str(tmp_path / "LR"), "--metrics", "psnr",
                           "-o", str(tmp_path / "res"), "--device", "cpu"]) == 0
    assert read_image(tmp_path / "res" / "LR" / "a.png").shape == (36, 44, 3)
    assert read_csv(tmp_path / "res" / "LR" / "metrics.csv") == [{"image": "a"}]
    assert "no ground truth: outputs only" in (tmp_path / "res" / "results.md").read_text()


def test_lpips_weights_missing_are_named_and_local_weights_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        LPIPSMetric("alex")
    # by default LPIPS is skipped with a note; asked for explicitly, it is an error
    assert "LPIPS not computed" in Benchmark("sr", 4).notes[0]
    assert benchmark_main(["--restored", str(tmp_path), "--gt", str(tmp_path), "--task", "sr",
                           "--metrics", "lpips"]) == 2
    assert "alexnet-owt-7be5be79.pth" in capsys.readouterr().err

    torch.manual_seed(0)  # a local backbone file (only the conv features are used)
    features = torchvision.models.alexnet().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "alexnet.pth")
    lpips = LPIPSMetric("alex", tmp_path / "alexnet.pth")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert lpips(image, image) == pytest.approx(0.0, abs=1e-7)
    assert lpips(image, 255 - image) > lpips(image, np.clip(image.astype(int) + 8, 0, 255).astype(np.uint8)) > 0


def test_fid_is_computed_over_the_set_and_reported(tmp_path, monkeypatch):
    class MeanFID:  # stands in for diffir.metrics.fid: the squared distance of the mean pixel values
        def __init__(self, weights, device):
            self.reset()

        def reset(self):
            self.fake, self.real = [], []

        def update(self, output, gt):
            self.fake.append(output.mean())
            self.real.append(gt.mean())

        def compute(self):
            return float((np.mean(self.fake) - np.mean(self.real)) ** 2)

    monkeypatch.setattr(suite, "FIDMetric", MeanFID)
    for i, value in enumerate((50, 70)):
        write_image(tmp_path / "celeba_thick" / f"im{i}.png", np.full((8, 8, 3), value, np.uint8))
        write_image(tmp_path / "celeba_thick" / f"im{i}_mask000.png", np.zeros((8, 8), np.uint8))
        write_image(tmp_path / "out" / f"im{i}.png", np.full((8, 8, 3), value + 2, np.uint8))
    benchmark = Benchmark("inpaint", metrics=["fid"])
    result = benchmark.run_set(BenchmarkSet("celeba_thick", tmp_path / "celeba_thick"), tmp_path / "res",
                               restored_dir=tmp_path / "out")
    assert [row["image"] for row in result.rows] == ["im0", "im1"]  # masks are not samples
    assert result.set_metrics == {"fid": pytest.approx(4.0)}
    suite.write_summary(tmp_path / "res", [result], benchmark, "FID")
    markdown = (tmp_path / "res" / "results.md").read_text()
    assert "| celeba_thick | 2 | masked input (baseline) |  |\n| celeba_thick | 2 | model | 4.0000 |\n" \
           "| celeba_thick |  | DiffIR paper (Table 1) | 5.1440 |" in markdown
    assert "FID is computed for the model only" in markdown


def test_same_size_tasks_have_the_lq_input_as_baseline(tmp_path):
    rng = np.random.default_rng(2)
    gt = rng.integers(40, 200, (16, 24, 3), dtype=np.uint8)
    blurry, restored = gt + np.uint8(10), gt + np.uint8(2)
    for folder, image in (("gt", gt), ("lq", blurry), ("out", restored)):
        write_image(tmp_path / folder / "a.png", image)
    result = Benchmark("deblur", metrics=["psnr"]).run_set(
        BenchmarkSet("GoPro", tmp_path / "lq", tmp_path / "gt"), tmp_path / "res", restored_dir=tmp_path / "out")
    assert result.baseline == "LQ input"
    assert result.baseline_summary()["psnr"] == pytest.approx(20 * math.log10(255 / 10))
    assert result.summary()["psnr"] == pytest.approx(20 * math.log10(255 / 2))

    # inpainting: the image with black holes, as the network is given it
    mask = np.zeros((16, 24), np.uint8)
    mask[:, :6] = 255  # a quarter of the pixels
    write_image(tmp_path / "images" / "a.png", gt)
    write_image(tmp_path / "images" / "a_mask.png", mask)
    result = Benchmark("inpaint", metrics=["psnr"]).run_set(
        BenchmarkSet("celeba", tmp_path / "images"), tmp_path / "res", restored_dir=tmp_path / "out")
    assert result.baseline == "masked input"
    expected = 10 * math.log10(255 ** 2 / np.mean((gt[:, :6].astype(np.float64)) ** 2 / 4))
    assert result.baseline_summary()["psnr"] == pytest.approx(expected)


def test_inpainting_masks_are_paired_by_name_listing_each_folder_once(tmp_path, monkeypatch):
    blank = np.zeros((4, 4), np.uint8)
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "images" / f"{name}.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "images" / "d_mask0.png", blank)  # beside the images: ignored with a mask folder
    for name in ("a", "a_mask2", "a_mask1", "b", "ab_mask0", "c_x_mask0"):
        write_image(tmp_path / "masks" / f"{name}.png", blank)
    listed, list_images = [], suite._images

    def listing_images(folder):
        listed.append(folder)
        return list_images(folder)

    monkeypatch.setattr(suite, "_images", listing_images)

    samples, problems = suite.list_samples(BenchmarkSet("set", tmp_path / "images", mask_dir=tmp_path / "masks"),
                                           "inpaint")
    # NAME_mask* comes before NAME.* and the first in name order wins; ab_mask0 and c_x_mask0 are other images'
    assert {s.name: s.mask.name for s in samples} == {"a": "a_mask1.png", "b": "b.png"}
    assert problems == [(str(tmp_path / "images" / name), f"no mask {name[0]}_mask*.png in {tmp_path / 'masks'}")
                        for name in ("c.png", "d.png")]
    assert listed == [tmp_path / "images", tmp_path / "masks"]

    # without a mask folder the masks lie beside the images, and an image is never its own mask
    samples, problems = suite.list_samples(BenchmarkSet("set", tmp_path / "images"), "inpaint")
    assert {s.name: s.mask.name for s in samples} == {"d": "d_mask0.png"}
    assert [file for file, _ in problems] == [str(tmp_path / "images" / f"{n}.png") for n in "abc"]
    with pytest.raises(FileNotFoundError, match="benchmark folder not found: .*nowhere"):
        suite.list_samples(BenchmarkSet("set", tmp_path / "images", mask_dir=tmp_path / "nowhere"), "inpaint")


def test_stochasticity_report():
    torch.manual_seed(0)
    restorer = Restorer(DiffIRS2(**TINY), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    same = stochasticity(restorer, image, [7, 7])
    assert same["pixel_std_max"] == 0 and same["psnr_spread"] == 0 and same["reference"] == "mean output"
    report = stochasticity(restorer, image, [0, 1, 2])
    outputs = np.stack([restorer.restore(image.astype(np.float32) / 255, seed=s) for s in (0, 1, 2)]) * 255
    assert report["pixel_std_mean"] == pytest.approx(outputs.std(axis=0).mean(), rel=1e-4)
    assert report["pixel_std_max"] > 0 and report["psnr_min"] <= report["psnr_max"]


def test_paper_sets_are_matched_by_name():
    assert find_paper_set("Set14", "sr").results["psnr"] == 27.73
    assert find_paper_set("RealSR-Canon-x4", "sr").name == "RealSRSet"
    assert find_paper_set("places_random_thin_512", "inpaint").name == "Places, narrow masks"
    assert find_paper_set("Set14", "deblur") is None and find_paper_set("Set5", "sr") is None
