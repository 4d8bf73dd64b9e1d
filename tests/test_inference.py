"""inference.py, the Restorer API, image I/O, checkpoint loading, the model zoo and ONNX export.

Networks are tiny and random (dim 8, one block per level); images are generated or small crops of the
bundled photos. Everything runs on one CPU thread: on a shared 2-core machine, multi-threaded kernels
on tiny tensors spend most of their time waiting for each other.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from diffir import DiffIRS1, DiffIRS2
from diffir.archs.detect import infer_network_options, network_for_state_dict
from diffir.checkpoint import CheckpointError, blend_state_dicts, read_state_dict
from diffir.cli import build_parser, main as inference_main, mask_finder
from diffir.image_io import (ImageReadError, list_image_files, merge_image, read_image, read_mask, split_channels,
                             split_image, write_image)
from diffir.restorer import (NonFiniteOutputError, Restorer, _NetworkInput, _ramp_window, initial_noise, mask_to_array,
                             tile_starts)
from diffir.utils import crop_to, pad_to_multiple
from diffir.zoo import ZOO, ModelNotFoundError, find_model, network_options, resolve

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "demo_data" / "train"
TINY = dict(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])


def tiny_net(seed: int = 0, **kwargs) -> DiffIRS2:
    torch.manual_seed(seed)
    return DiffIRS2(**{**TINY, "scale": 4, **kwargs}).eval()


def save_checkpoint(net: torch.nn.Module, path: Path) -> Path:
    torch.save({"params": net.state_dict(), "params_ema": net.state_dict()}, path)
    return path


def photo(height: int, width: int, name: str = "fig_bowl.png") -> np.ndarray:
    """A natural RGB uint8 image: a bundled demo photo scaled down."""
    return np.ascontiguousarray(cv2.resize(cv2.imread(str(PHOTOS / name)), (width, height),
                                           interpolation=cv2.INTER_AREA)[:, :, ::-1])


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(peak ** 2 / mse)


# --------------------------------------------------------------------------- the script
def test_script_restores_mixed_folder_and_reports_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    rgba = rng.integers(0, 256, (16, 12, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 12, dtype=np.uint8)[None, :]
    cv2.imwrite(str(src / "odd.png"), rng.integers(0, 256, (13, 21, 3), dtype=np.uint8))
    cv2.imwrite(str(src / "gray.png"), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    cv2.imwrite(str(src / "alpha.png"), rgba)
    cv2.imwrite(str(src / "deep.png"), rng.integers(0, 65536, (10, 9, 3), dtype=np.uint16))
    cv2.imwrite(str(src / "photo.jpg"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    model = save_checkpoint(tiny_net(), tmp_path / "model.pth")
    out = tmp_path / "out"

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(REPO / "inference.py"), "-i", str(src), "-o", str(out), "-m", str(model),
                          "--batch", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    assert run.returncode == 1, run.stderr
    assert "corrupt.png" in run.stderr and "empty.jpg" in run.stderr
    assert "restored 5 of 7" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["alpha.png", "deep.png", "gray.png", "odd.png", "photo.jpg"]
    shapes = {p.name: (read_image(p).shape, read_image(p).dtype) for p in out.iterdir()}
    assert shapes["odd.png"] == ((52, 84, 3), np.uint8)
    assert shapes["gray.png"] == ((64, 64), np.uint8)  # restored as gray
    assert shapes["deep.png"] == ((40, 36, 3), np.uint16)  # bit depth kept
    assert shapes["photo.jpg"] == ((64, 64, 3), np.uint8)
    assert shapes["alpha.png"] == ((64, 48, 4), np.uint8)
    # the alpha channel is the input's, resized on its own (bicubic), not run through the network
    expected_alpha = cv2.resize(rgba[..., 3].astype(np.float32) / 255, (48, 64), interpolation=cv2.INTER_CUBIC)
    alpha = read_image(out / "alpha.png")[..., 3].astype(np.float32) / 255
    assert np.abs(alpha - np.clip(expected_alpha, 0, 1)).max() <= 1 / 255


def test_cli_errors_exit_2_with_a_clear_message(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert inference_main(["-i", str(tmp_path / "missing"), "-m", "x"]) == 2
    assert "is not a file, a folder or a glob" in capsys.readouterr().err
    assert inference_main(["-i", str(tmp_path), "-m", str(tmp_path / "none.pth")]) == 2
    assert "neither a checkpoint file nor a zoo model" in capsys.readouterr().err
    model = save_checkpoint(tiny_net(), tmp_path / "m.pth")
    assert inference_main(["-i", str(tmp_path / "a.png"), "-m", str(model), "--task", "deblur"]) == 2
    assert "--task deblur but the model does sr" in capsys.readouterr().err
    # writing next to the inputs would overwrite them: refused per image
    assert inference_main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path), "-m", str(model)]) == 1
    assert "would overwrite an input" in capsys.readouterr().err


def test_cli_inpainting_with_mask_folder_keeps_known_pixels(tmp_path):
    net = tiny_net(inp_channels=4, scale=None)
    model = save_checkpoint(net, tmp_path / "inpaint.pth")
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    image = photo(20, 28)
    mask = np.zeros((20, 28), np.uint8)
    mask[5:12, 8:20] = 255
    write_image(tmp_path / "in" / "a.png", image)
    write_image(tmp_path / "masks" / "a_mask.png", mask)
    write_image(tmp_path / "in" / "b.png", image)  # no mask for b: reported, a still restored

    code = inference_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(model),
                           "--mask", str(tmp_path / "masks")])

    assert code == 1
    out = read_image(tmp_path / "out" / "a.png")
    hole = mask > 0
    assert np.array_equal(out[~hole], image[~hole])
    assert not (tmp_path / "out" / "b.png").exists()


# --------------------------------------------------------------------------- Restorer
@pytest.mark.parametrize("kwargs, size", [(dict(scale=4), (13, 21)), (dict(scale=4), (5, 3)),
                                          (dict(scale=2), (17, 9)), (dict(scale=None), (11, 30))])
def test_padding_restores_exact_sizes(kwargs, size):
    restorer = Restorer(tiny_net(**kwargs), device="cpu")
    out = restorer.restore(photo(*size), seed=0)
    assert out.shape == (size[0] * restorer.scale, size[1] * restorer.scale, 3)


def test_restorer_matches_the_network_forward():
    net = tiny_net()
    lq = torch.from_numpy(photo(13, 21)).permute(2, 0, 1)[None].float() / 255
    padded, size = pad_to_multiple(lq, net.size_multiple)
    with torch.no_grad():
        expected = crop_to(net(padded, noise=initial_noise(1, 7)), size, 4)
    assert torch.allclose(Restorer(net, device="cpu").restore_tensor(lq, noise=initial_noise(1, 7)), expected,
                          atol=1e-6)



@pytest.mark.slow
def test_compiled_restorer_matches_eager():
    """compile=True: inductor on the CPU, the suite's one real compilation (about 20 s)."""
    lq = torch.from_numpy(photo(16, 24)).permute(2, 0, 1)[None].float() / 255
    eager = Restorer(tiny_net(), device="cpu").restore_tensor(lq, noise=initial_noise(1, 3))
    compiled = Restorer(tiny_net(), device="cpu", compile=True)
    assert torch.allclose(compiled.restore_tensor(lq, noise=initial_noise(1, 3)), eager, atol=1e-5)
    assert list(compiled.net.state_dict()) == list(tiny_net().state_dict())


def test_cli_compile_flag(capsys):
    assert build_parser().parse_args(["-i", "x"]).compile is None
    assert build_parser().parse_args(["-i", "x", "--compile"]).compile == "default"
    assert build_parser().parse_args(["-i", "x", "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-i", "x", "--compile", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err

def test_tiled_output_matches_untiled():
    """Tiles share one IPR computed from the whole image, and overlaps are blended.

    The CPEN condition vector is the untiled one up to float summation order. The DIRformer outputs
    differ only because its transposed attention pools over all pixels of the tile. On a natural
    image at 4 x 6 tiles of 32 px with 8 px overlap, that difference is measured at 55-59 dB with
    random tiny networks. Requiring > 50 dB (RMS error below one 8-bit level) leaves a margin, and
    the test still fails if the blending is broken: hard seams (no overlap) give about 40 dB.
    """
    image = photo(64, 96).astype(np.float32) / 255
    net = tiny_net()
    whole = Restorer(net, device="cpu")
    tiled = Restorer(net, device="cpu", tile=32, tile_overlap=8)
    x, noise = torch.from_numpy(image).permute(2, 0, 1)[None], initial_noise(1, 0)
    with torch.no_grad():
        cond_whole, cond_tiled = net.condition(x), net.condition.forward_tiled(x, 32)
        ipr_whole, ipr_tiled = net.estimate_ipr(x, noise), net.estimate_ipr(x, noise, tile=32)
    assert torch.allclose(cond_tiled, cond_whole, rtol=1e-5, atol=1e-6)
    assert not torch.equal(cond_tiled, cond_whole)  # the tiled path did run
    assert torch.allclose(ipr_tiled, ipr_whole, rtol=1e-5, atol=1e-6)

    reference = whole.restore(image, seed=0)
    blended = psnr(tiled.restore(image, seed=0), reference)
    seams = psnr(Restorer(net, device="cpu", tile=32, tile_overlap=0).restore(image, seed=0), reference)
    assert blended > 50
    assert seams < blended - 6


def whole_canvas_blend(net: DiffIRS2, x: torch.Tensor, noise: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """The tiled blend accumulated on one full-size float canvas (Restorer's before the block-by-block one)."""
    s, (height, width) = net.scale, x.shape[-2:]
    ipr = net.estimate_ipr(x, noise, tile)
    out = torch.zeros(1, 3, height * s, width * s)
    weight = torch.zeros(1, 1, height * s, width * s)
    for y0 in tile_starts(height, tile, overlap):
        for x0 in tile_starts(width, tile, overlap):
            window = (_ramp_window(tile * s, overlap * s, y0 > 0, y0 + tile < height)[:, None]
                      * _ramp_window(tile * s, overlap * s, x0 > 0, x0 + tile < width)[None, :])
            rows, cols = slice(y0 * s, (y0 + tile) * s), slice(x0 * s, (x0 + tile) * s)
            out[..., rows, cols] += net.restore_with_ipr(x[..., y0:y0 + tile, x0:x0 + tile], ipr) * window
            weight[..., rows, cols] += window
    return out / weight


@pytest.mark.parametrize("overlap", [8, 24])  # 24: up to four tile rows share an output row
def test_block_blend_equals_whole_canvas_blend_and_reports_progress(overlap):
    net = tiny_net()
    image = photo(72, 104).astype(np.float32) / 255
    # laid out as restore_batch lays it out (channels last in memory), so the two paths convolve alike
    x, noise = torch.from_numpy(image[None]).permute(0, 3, 1, 2), initial_noise(1, 0)
    restorer = Restorer(net, device="cpu", tile=32, tile_overlap=overlap)
    calls = []
    with torch.no_grad():
        reference = whole_canvas_blend(net, x, noise, 32, overlap)
    banded = restorer.restore_tensor(x, noise=noise, progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(banded, reference)  # the same sums in the same order
    # float memory is bounded by the tile: blocks of at most a tile, open sums of at most the overlap rows
    with torch.no_grad():
        ipr = net.estimate_ipr(x, noise, 32)
        blocks = list(restorer._blocks(x, ipr, contextlib.nullcontext, lambda done, total: None))
    assert max(block.shape[-2] for _, _, block in blocks) <= 32 * net.scale
    assert max(block.shape[-1] for _, _, block in blocks) <= 32 * net.scale
    assert sum(block.shape[-2] * block.shape[-1] for _, _, block in blocks) == 72 * 104 * net.scale ** 2
    tiles = len(tile_starts(72, 32, overlap)) * len(tile_starts(104, 32, overlap))
    assert tiles >= 12 and calls == [(i, tiles) for i in range(1, tiles + 1)]
    # the arrays path writes each finished block in the final dtype: the same as converting the whole canvas
    expected = merge_image(reference[0].clamp(0, 1).permute(1, 2, 0).numpy(), split_image(image)[1])
    assert np.abs(restorer.restore(image, seed=0) - expected).max() <= 1e-6
    gray16 = np.round(image.mean(axis=2) * 65535).astype(np.uint16)
    out16 = restorer.restore(gray16, seed=0)
    assert out16.shape == (288, 416) and out16.dtype == np.uint16
    untiled = []
    Restorer(net, device="cpu").restore(image, seed=0, progress=lambda done, total: untiled.append((done, total)))
    assert untiled == [(1, 1)]


@pytest.mark.parametrize("kind", ["uint8", "gray16", "rgba", "tiny", "inpaint"])
def test_arrays_read_tile_by_tile_give_what_the_float_tensor_path_gives(kind):
    """restore_batch keeps the pixels in their own dtype and scales each region as it is read (padding
    included: 'reflect', or 'replicate' for an image smaller than the padding); the float tensor path
    holds the whole image in float. The network sees the same values; the outputs agree to rounding."""
    inpaint = kind == "inpaint"
    net = tiny_net(task="inpaint", inp_channels=4, scale=1) if inpaint else tiny_net()
    size = (5, 3) if kind == "tiny" else (70, 101)
    image = photo(*size)
    if kind == "gray16":
        image = np.round(image.mean(axis=2) * 257).astype(np.uint16)
    if kind == "rgba":
        image = np.dstack([image, np.full(size, 200, np.uint8)])
    mask = np.zeros(size, bool)
    mask[20:40, 30:60] = True
    rgb, layout = split_image(image)
    lq = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    mask_tensor = torch.from_numpy(mask.astype(np.float32))[None, None] if inpaint else None
    source = _NetworkInput.from_arrays([split_channels(image)[0]], mask_tensor, 8, torch.device("cpu"))
    whole = _NetworkInput.from_tensors(lq, mask_tensor, 8, torch.device("cpu")).whole()
    assert source.shape == tuple(whole.shape) and source.size == size
    for rows, cols in [(slice(None), slice(None)), (slice(0, 5), slice(3, 8)), (slice(40, 72), slice(96, 104))]:
        assert torch.equal(source[..., rows, cols], whole[..., rows, cols])
    restorer = Restorer(net, device="cpu", tile=32, tile_overlap=8)
    reference = restorer.restore_tensor(lq, mask_tensor, initial_noise(1, 0))
    expected = merge_image(reference[0].clamp(0, 1).permute(1, 2, 0).numpy(), layout.at_size(reference.shape[-2:]))
    restored = restorer.restore(image, mask if inpaint else None, seed=0)
    assert restored.shape == expected.shape and restored.dtype == expected.dtype
    assert np.abs(restored.astype(np.int64) - expected).max() <= 1  # a float rounding at a half-step at most


def test_tensor_masks_may_be_bool_and_a_mask_for_a_non_inpainting_model_is_named():
    net = tiny_net(task="inpaint", inp_channels=4, scale=1)
    lq = torch.from_numpy(photo(20, 30).astype(np.float32) / 255).permute(2, 0, 1)[None]
    holes = torch.zeros(1, 1, 20, 30, dtype=torch.bool)
    holes[..., 5:12, 8:20] = True
    restorer = Restorer(net, device="cpu", tile=16, tile_overlap=4)
    noise = initial_noise(1, 0)
    assert torch.equal(restorer.restore_tensor(lq, holes, noise), restorer.restore_tensor(lq, holes.float(), noise))
    with pytest.raises(ValueError, match="a mask was given but the model does sr"):
        Restorer(tiny_net(), device="cpu").restore_tensor(lq, holes[..., :10, :10])


def test_non_finite_weights_are_an_error_not_a_black_image(tmp_path, capsys):
    net = tiny_net()
    with torch.no_grad():
        net.G.tail[1].weight.fill_(float("nan"))
    image = photo(16, 16)
    for precision in ("fp32", "bf16"):  # bf16: after its fp32 re-run
        with pytest.raises(NonFiniteOutputError, match="weights are not finite .first: G.tail.1.weight"):
            Restorer(net, device="cpu", precision=precision).restore(image, seed=0)
    write_image(tmp_path / "a.png", image)
    model = save_checkpoint(net, tmp_path / "nan.pth")
    assert inference_main(["-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-m", str(model)]) == 1
    assert "weights are not finite" in capsys.readouterr().err
    assert not (tmp_path / "out" / "a.png").exists()


def test_seeded_runs_are_identical_and_seeds_matter():
    restorer = Restorer(tiny_net(), device="cpu")
    image = photo(16, 24).astype(np.float32) / 255
    first, again, other = (restorer.restore(image, seed=s) for s in (3, 3, 4))
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4


def test_batch_equals_single_images():
    restorer = Restorer(tiny_net(), device="cpu")
    images = [photo(16, 24, name) for name in ("fig_bowl.png", "forest_stream.png")]
    batched = restorer.restore_batch(images, seed=[5, 6])
    singles = [restorer.restore(image, seed=s) for image, s in zip(images, (5, 6))]
    for b, s in zip(batched, singles):
        assert np.abs(b.astype(int) - s.astype(int)).max() <= 1  # one 8-bit level: float order only


def test_a_batch_may_mix_dtypes_and_gray_images():
    """Each image of a batch is scaled by its own dtype's maximum (a 16-bit image beside an 8-bit one
    must not darken it) and keeps its own layout."""
    restorer = Restorer(tiny_net(), device="cpu", tile=16, tile_overlap=4)
    rgb8 = photo(24, 40)
    images = [rgb8, rgb8.astype(np.uint16) * 257, rgb8.astype(np.float32) / 255, rgb8.mean(axis=2).astype(np.uint8)]
    batched = restorer.restore_batch(images, seed=3)
    for image, out in zip(images, batched):
        alone = restorer.restore(image, seed=3)
        assert out.dtype == image.dtype and out.shape == alone.shape
        peak = {np.uint8: 255, np.uint16: 65535}.get(image.dtype.type, 1.0)
        assert np.abs(out.astype(np.float64) - alone).max() <= peak / 255  # float order only
    assert np.abs(batched[1] / 257.0 - batched[0]).max() <= 1


def test_blend_zero_and_one_are_the_endpoint_models(tmp_path):
    a, b = tiny_net(0), tiny_net(1)
    path_a, path_b = save_checkpoint(a, tmp_path / "a.pth"), save_checkpoint(b, tmp_path / "b.pth")
    image = photo(16, 16).astype(np.float32) / 255
    out_a = Restorer(a, device="cpu").restore(image, seed=0)
    out_b = Restorer(b, device="cpu").restore(image, seed=0)

    def blended(alpha):
        return Restorer.from_pretrained(path_a, model2=path_b, blend=alpha, device="cpu").restore(image, seed=0)

    assert np.array_equal(blended(0.0), out_a)
    assert np.array_equal(blended(1.0), out_b)
    middle = blended(0.5)
    assert np.abs(middle - out_a).max() > 1e-4 and np.abs(middle - out_b).max() > 1e-4
    half = blend_state_dicts(a.state_dict(), b.state_dict(), 0.5)
    key = "G.patch_embed.proj.weight"
    assert torch.allclose(half[key], (a.state_dict()[key] + b.state_dict()[key]) / 2)
    with pytest.raises(ValueError, match="different architectures"):
        blend_state_dicts(a.state_dict(), tiny_net(scale=None).state_dict(), 0.5)


def test_reduced_precision_falls_back_to_fp32_on_nan():
    net = tiny_net()
    image = photo(16, 16).astype(np.float32) / 255
    fp32 = Restorer(net, device="cpu").restore(image, seed=0)
    bf16 = Restorer(net, device="cpu", precision="bf16")
    assert psnr(bf16.restore(image, seed=0), fp32) > 25 and bf16.fp32_fallbacks == 0

    def poison_under_autocast(module, inputs, output):  # what an fp16 overflow looks like
        return output * float("nan") if torch.is_autocast_enabled("cpu") else output

    handle = net.G.register_forward_hook(poison_under_autocast)
    try:
        with pytest.warns(UserWarning, match="restored again in fp32"):
            out = bf16.restore(image, seed=0)
    finally:
        handle.remove()
    assert bf16.fp32_fallbacks == 1
    assert np.array_equal(out, fp32)


def test_restorer_rejects_stage_one_and_checks_masks():
    with pytest.raises(TypeError, match="stage-two"):
        Restorer(DiffIRS1(**TINY, scale=4), device="cpu")
    inpaint = Restorer(tiny_net(inp_channels=4, scale=None), device="cpu")
    with pytest.raises(ValueError, match="give a mask"):
        inpaint.restore(photo(16, 16))
    with pytest.raises(ValueError, match="mask is 8x8 but the image is 16x16"):
        inpaint.restore(photo(16, 16), np.zeros((8, 8), bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_colour_masks_have_the_holes_of_gray_masks(tmp_path, dtype):
    """White = hole is "above half the maximum" of the mask's dtype, whatever its channels: an RGB mask
    of small nonzero values has no holes, like the gray mask of the same values."""
    top = np.iinfo(dtype).max
    gray = np.array([[0, 1, top // 2], [top // 2 + 1, top - 1, top]], dtype)
    rgb, rgba = np.repeat(gray[:, :, None], 3, axis=2), np.repeat(gray[:, :, None], 4, axis=2)
    expected = np.array([[False, False, False], [True, True, True]])
    for mask in (gray, rgb, rgba):
        assert np.array_equal(mask_to_array(mask, gray.shape), expected.astype(np.float32))
        write_image(tmp_path / "mask.png", mask)
        assert np.array_equal(read_mask(tmp_path / "mask.png"), expected)
    assert np.array_equal(mask_to_array(expected, gray.shape), expected)  # bool: as is
    zero_one = expected.astype(dtype)  # a 0/1 mask file: its 1s are the holes, not "below half the maximum"
    write_image(tmp_path / "mask.png", zero_one)
    assert np.array_equal(read_mask(tmp_path / "mask.png"), expected)
    assert np.array_equal(mask_to_array(np.where(expected, 0.6, 0.5), gray.shape), expected)  # float: > 0.5


def test_cli_mask_finder_pairs_masks_by_name(tmp_path):
    masks = tmp_path / "masks"
    (masks / "sub").mkdir(parents=True)
    for name in ("a.png", "a_mask.png", "b_mask.png", "b_mask.jpg", "c.txt", "c_mask.tif", "d.x.png", "D.png",
                 "e_mask2.png", "E.png"):
        (masks / name).touch()
    find = mask_finder(masks)
    # image_io.mask_lookup's rule: NAME_mask*.* before NAME.*, the first in name order, only image files,
    # case-sensitive
    assert [find(Path("in") / f"{stem}.jpg").name for stem in ("a", "b", "c", "d.x", "D", "e", "E")] == [
        "a_mask.png", "b_mask.jpg", "c_mask.tif", "d.x.png", "D.png", "e_mask2.png", "E.png"]
    for missing in ("d", "f"):  # d.x.png is the mask of d.x, not of d
        with pytest.raises(FileNotFoundError, match=f"no mask for {missing}.png in .*masks "
                                                    rf"\(expected {missing}_mask.png, or {missing}.png in a folder"):
            find(Path(f"{missing}.png"))
    # an image is never its own mask, however its folder is spelled
    for image in (masks / "D.png", masks / "sub" / ".." / "D.png"):
        with pytest.raises(FileNotFoundError, match="no mask for D.png"):
            find(image)
    assert find(masks / "a.png") == masks / "a_mask.png"
    assert mask_finder(masks / "a.png")(Path("z.png")) == masks / "a.png"  # a mask file serves every image


def test_cli_images_and_masks_in_one_folder(tmp_path, capsys):
    """LaMa's layout, -i DIR --mask DIR: each image gets its NAME_mask.png, never itself, and the masks
    are not restored as images."""
    model = save_checkpoint(tiny_net(inp_channels=4, scale=None), tmp_path / "inpaint.pth")
    both = tmp_path / "both"
    both.mkdir()
    image = photo(20, 28)
    mask = np.zeros((20, 28), np.uint8)
    mask[5:12, 8:20] = 255
    for name in ("a", "b"):
        write_image(both / f"{name}.png", image)
        write_image(both / f"{name}_mask.png", mask)

    assert inference_main(["-i", str(both), "-o", str(tmp_path / "out"), "-m", str(model), "--mask", str(both)]) == 0
    assert "restored 2 of 2" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    out, hole = read_image(tmp_path / "out" / "a.png"), mask > 0
    assert np.array_equal(out[~hole], image[~hole]) and not np.array_equal(out[hole], image[hole])


# --------------------------------------------------------------------------- image I/O
def test_image_io_round_trips_and_writes_atomically(tmp_path):
    deep = np.random.default_rng(1).integers(0, 65536, (7, 5, 3), dtype=np.uint16)
    target = tmp_path / "ünïcode dir" / "deep.png"
    write_image(target, deep)
    assert np.array_equal(read_image(target), deep)
    assert [p.name for p in target.parent.iterdir()] == ["deep.png"]  # no temporary file left behind
    assert list_image_files(target.parent) == [target]
    (target.parent / ".deep.png.123.abcd.png").write_bytes(b"x")  # a killed writer's temporary file
    (target.parent / "._deep.png").write_bytes(b"x")  # macOS metadata
    assert list_image_files(target.parent) == [target]
    with pytest.raises(ValueError, match="JPEG has no alpha"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="bad.png: not a decodable image"):
        read_image(tmp_path / "bad.png")
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 200
    write_image(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask > 127)
    rgb, layout = split_image(np.full((3, 3), 255, np.uint8))
    assert layout.gray and rgb.shape == (3, 3, 3) and rgb.max() == 1.0
    # a phone JPEG stored landscape with EXIF orientation 6 ("rotate 90 degrees") is read upright
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((10, 16, 3), np.uint8)).save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (16, 10, 3)


@pytest.mark.parametrize("channels", [3, 4])
def test_consumed_writes_equal_copied_writes_and_opencv_failures_fall_back(tmp_path, monkeypatch, channels):
    image = np.random.default_rng(2).integers(0, 256, (300, 7, channels), dtype=np.uint8)  # > one 256-row band
    write_image(tmp_path / "copy.png", image)
    assert np.array_equal(read_image(tmp_path / "copy.png"), image)
    consumed = image.copy()
    write_image(tmp_path / "consumed.png", consumed, consume=True)
    assert np.array_equal(read_image(tmp_path / "consumed.png"), image)
    assert not np.array_equal(consumed, image)  # its memory held the channels in OpenCV's order
    # OpenCV mangles non-ASCII paths on Windows: those are encoded in memory, as is anything imwrite refuses
    opened = []
    monkeypatch.setattr(cv2, "imwrite", lambda path, *args: opened.append(path) or False)
    write_image(tmp_path / "fallback.png", image)
    write_image(tmp_path / "ünïcode.png", image)
    assert len(opened) == 1 and "fallback" in opened[0]
    for name in ("fallback.png", "ünïcode.png"):
        assert np.array_equal(read_image(tmp_path / name), image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consumed.png", "copy.png", "fallback.png", "ünïcode.png"]


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("cls", [DiffIRS1, DiffIRS2])
@pytest.mark.parametrize("extra", [dict(scale=4), dict(scale=2), dict(scale=1), dict(ffn_expansion_factor=2),
                                   dict(LayerNorm_type="BiasFree", bias=True, num_blocks=[2, 1, 3, 1]),
                                   dict(inp_channels=4, num_refinement_blocks=0, dual_pixel_task=True)])
def test_network_options_are_inferred_from_the_weights(cls, extra):
    kwargs = {**TINY, "n_encoder_res": 2, "heads": [1, 2, 1, 2], "ffn_expansion_factor": 2.66, **extra}
    inferred = infer_network_options(cls(**kwargs).state_dict())
    assert inferred.pop("type") == cls.__name__
    for key, value in kwargs.items():
        assert inferred[key] == (list(value) if isinstance(value, tuple) else value), key
    assert ("scale" in inferred) == ("scale" in kwargs)


def test_official_checkpoint_is_auto_detected_and_reproduces_official_output():
    sys.path.insert(0, str(Path(__file__).parent))
    from official_fixture import load_fixture, materialize

    fixture = load_fixture("official_sr_x4_fixture.pt")
    state_dict = materialize(fixture["s2_params"])
    assert {k: v for k, v in infer_network_options(state_dict).items() if k != "type"} == fixture["config"]["S2"]
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # build in float64 so the float64 weights load without rounding
    try:
        net = network_for_state_dict(state_dict)
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        out = net(fixture["lq"], noise=fixture["s2_init_noise"])
    assert torch.allclose(out, fixture["s2_out"], atol=1e-10)


def test_checkpoint_layouts_and_errors(tmp_path):
    net = tiny_net(inp_channels=4, scale=None)
    weights = net.state_dict()
    torch.save({"params": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "ddp.pth")
    assert read_state_dict(tmp_path / "ddp.pth")[0].keys() == weights.keys()

    # a Lightning checkpoint whose pickled hyper-parameters torch.load refuses by default
    lightning = {"state_dict": {**{f"generator.{k}": v for k, v in weights.items()},
                                "discriminator.model0.0.weight": torch.zeros(1)},
                 "hyper_parameters": _Hyper(lr=1e-3)}
    torch.save(lightning, tmp_path / "last.ckpt")
    loaded, source = read_state_dict(tmp_path / "last.ckpt")
    assert loaded.keys() == weights.keys() and "generator" in source

    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="G.patch_embed"):
        infer_network_options({"conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not fit the network options"):
        network_for_state_dict(weights, {"type": "DiffIRS2", **TINY, "inp_channels": 4, "dim": 16})


class _Hyper:  # stands for the omegaconf objects Lightning pickles
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def test_official_option_file_without_scale_loads(tmp_path):
    """Official SR option files leave `scale` out (the official classes default to x4)."""
    net = tiny_net()
    options = {"type": "DiffIRS2", **TINY}
    (tmp_path / "opt.yml").write_text(f"network_g: {options}\n")
    loaded = network_for_state_dict(net.state_dict(), network_options(tmp_path / "opt.yml"))
    assert loaded.task == "sr" and loaded.scale == 4


# --------------------------------------------------------------------------- zoo
def test_zoo_resolves_files_and_says_where_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFIR_PRETRAINED", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    entry = ZOO["sisr-gan-x4"]
    with pytest.raises(ModelNotFoundError) as missing:
        resolve("sisr-gan-x4")
    assert entry.url in str(missing.value) and entry.file in str(missing.value)
    (tmp_path / entry.file).parent.mkdir(parents=True)
    (tmp_path / entry.file).write_bytes(b"weights")
    assert resolve("sisr-gan-x4") == tmp_path / entry.file
    assert find_model("sisr-gan-x4") == (tmp_path / entry.file, entry)
    with pytest.raises(KeyError, match="no model named"):
        resolve("nope")


def test_zoo_presets_build_the_official_networks_and_readme_lists_every_model():
    readme = (REPO / "pretrained" / "README.md").read_text()
    for entry in ZOO.values():
        assert f"`{entry.name}`" in readme and f"`{entry.file}`" in readme
        if entry.option:
            assert (REPO / entry.option).is_file(), entry.option
    # parameter counts of the official stage-two SR x4 and deblurring networks (paper-facts §2.4)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        counts = {name: sum(p.numel() for p in DiffIRS2(**{k: v for k, v in network_options(name).items()
                                                         if k != "type"}).parameters()) for name in ("sr-x4", "deblur")}
    assert counts == {"sr-x4": 24_971_206, "deblur": 26_911_934}


# --------------------------------------------------------------------------- ONNX
def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from diffir.export import check_onnx, export_onnx

    net = tiny_net()
    export_onnx(net, tmp_path / "noise_input.onnx")
    export_onnx(net, tmp_path / "seeded.onnx", seed=3)
    before = (tmp_path / "seeded.onnx").read_bytes()
    with pytest.raises(FileExistsError, match="seeded.onnx exists; give --overwrite to replace it"):
        export_onnx(net, tmp_path / "seeded.onnx")
    assert (tmp_path / "seeded.onnx").read_bytes() == before
    export_onnx(net, tmp_path / "seeded.onnx", seed=3, overwrite=True)
    restorer = Restorer(net, device="cpu")
    for height, width in ((16, 24), (21, 13)):  # dynamic sizes, one needing padding
        lq = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height))
        noise = initial_noise(2, [1, 2])
        assert check_onnx(tmp_path / "noise_input.onnx", net, lq, noise=noise) < 1e-4
        assert check_onnx(tmp_path / "seeded.onnx", net, lq, seed=3) < 1e-4
        import onnxruntime

        onnx_out = onnxruntime.InferenceSession(str(tmp_path / "seeded.onnx")).run(None, {"lq": lq.numpy()})[0]
        expected = restorer.restore_tensor(lq, noise=initial_noise(2, 3)).numpy()
        assert onnx_out.shape == (2, 3, 4 * height, 4 * width)
        assert np.abs(onnx_out - expected).max() < 1e-4
