"""The command lines: fast --help, what a run says it uses, kept outputs, every frame of animated and
multi-page files, tile progress, printed seeds, clear errors, and torchrun splitting a folder.

Networks are tiny and random (as in test_inference.py); images are a few pixels to a few dozen.
"""
from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from diffir import DiffIRS2, Restorer
from diffir.cli import clean_message, export_main
from diffir.cli import main as inference_main
from diffir.image_io import ImageReadError, read_image, write_image
from diffir.zoo import ZOO

REPO = Path(__file__).resolve().parent.parent
TINY = {"n_encoder_res": 1, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 1, 1]}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = DiffIRS2(**TINY, scale=4).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    torch.save({"params_ema": net.state_dict()}, path)
    return path


def images(folder: Path, count: int, size=(12, 16), seed=0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i}.png" for i in range(count)]
    for path in paths:
        write_image(path, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return paths


# ------------------------------------------------------------------------------ fast answers
# Runs a command's entry point as its console script would (sys.argv[0] = the command's name) and
# reports whether torch got imported: --help, --version and argument errors must answer without it.
RUNNER = """
import runpy, sys
command, target, *args = sys.argv[1:]
sys.argv = [command, *args]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        module, function = target.split(":")
        sys.exit(getattr(__import__(module, fromlist=[function]), function)())
finally:
    print("TORCH IMPORTED" if "torch" in sys.modules else "NO TORCH", file=sys.stderr)
"""
COMMANDS = [("inference.py", str(REPO / "inference.py")), ("diffir-restore", "diffir.cli:main"),
            ("diffir-export", "diffir.cli:export_main"), ("diffir-benchmark", "diffir.benchmark.cli:main"),
            ("benchmark.py", str(REPO / "benchmarks" / "benchmark.py"))]


@pytest.mark.parametrize("command, target", COMMANDS)
def test_help_version_and_argument_errors_answer_without_importing_torch(command, target):
    for args, code in ((["--help"], 0), (["--version"], 0), (["--no-such-option"], 2)):
        run = subprocess.run([sys.executable, "-c", RUNNER, command, target, *args], check=False,
                             capture_output=True, text=True, cwd=REPO, env=ENV, timeout=120)
        assert run.returncode == code, run.stderr
        assert run.stderr.rstrip().endswith("NO TORCH"), (args, run.stderr)
        if args == ["--help"]:
            assert run.stdout.startswith(f"usage: {command} ")
        if args == ["--version"]:
            assert "0." in run.stdout + run.stderr
    run = subprocess.run([sys.executable, "-c", "import sys, diffir; print('torch' in sys.modules)"],
                         check=False, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=60)
    assert run.stdout.strip() == "False"  # import diffir itself is cheap too


def test_every_option_says_what_it_does():
    from diffir.benchmark.cli import build_parser as benchmark_parser
    from diffir.cli import build_export_parser, build_parser

    for parser in (build_parser(), build_export_parser(), benchmark_parser()):
        assert [action.dest for action in parser._actions if not action.help] == []


# ------------------------------------------------------------------------------ what a run says
def test_default_run_names_the_demo_model_device_precision_and_how_to_get_an_official_one(tmp_path, capsys):
    images(tmp_path / "in", 1, size=(8, 8))
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "model: demo-sr-x4 (" in err and "device: cpu" in err and "precision: fp32" in err
    assert "whole images (no tiles)" in err and "DEMO" in err
    official = ZOO["sisr-gan-x4"]
    assert "-m sisr-gan-x4" in err and official.url in err and official.file in err
    assert "diffir-convert " in err and ".safetensors" in err


def test_a_file_model_is_named_and_not_called_a_demo(tmp_path, checkpoint, capsys):
    images(tmp_path / "in", 1, size=(8, 8))
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(checkpoint),
                           "--tile", "16", "--tile-overlap", "4"]) == 0
    err = capsys.readouterr().err
    assert f"model: {checkpoint}, sr x4" in err and "16 px tiles" in err and "DEMO" not in err


# ------------------------------------------------------------------------------ nothing lost
def test_existing_outputs_are_kept_and_skipped_unless_overwrite(tmp_path, checkpoint, capsys):
    images(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "img0.png").write_bytes(b"the user's own file")
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert (out / "img0.png").read_bytes() == b"the user's own file"
    assert read_image(out / "img1.png").shape == (48, 64, 3)
    assert "restored 1 of 2" in err and "skipped 1 whose output already exists" in err
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(checkpoint), "--overwrite"]) == 0
    assert read_image(out / "img0.png").shape == (48, 64, 3)
    assert "restored 2 of 2" in capsys.readouterr().err
    assert not list(out.glob(".*tmp"))  # atomic writes leave no temporary files


def test_animated_gif_and_multipage_tiff_restore_every_frame(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(1)
    src = tmp_path / "in"
    src.mkdir()
    gif_frames = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(gif_frames[0]).save(src / "anim.gif", save_all=True, duration=100, loop=0,
                                        append_images=[Image.fromarray(f) for f in gif_frames[1:]])
    pages = [rng.integers(0, 65536, (9, 8, 3), dtype=np.uint16) for _ in range(2)]
    assert cv2.imwritemulti(str(src / "scan.tif"), pages)
    with pytest.raises(ImageReadError, match="3 frames"):
        read_image(src / "anim.gif")  # never its first frame alone

    assert inference_main(["-i", str(src), "-o", str(tmp_path / "out"), "-m", str(checkpoint)]) == 0
    assert "restored 5 of 5" in capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["anim_frame0001.png", "anim_frame0002.png", "anim_frame0003.png",
                     "scan_frame0001.tif", "scan_frame0002.tif"]
    restorer = Restorer.from_pretrained(checkpoint, device="cpu")
    for name, frame in zip(names[:3], [Image.open(src / "anim.gif")] * 3):
        index = int(name[-8:-4]) - 1
        frame.seek(index)
        expected = restorer.restore(np.asarray(frame.convert("RGB")), seed=0)  # the frame as GIF stores it
        assert np.array_equal(read_image(tmp_path / "out" / name), expected)
    tiff = read_image(tmp_path / "out" / "scan_frame0002.tif")
    assert tiff.dtype == np.uint16 and np.array_equal(tiff, restorer.restore(pages[1][:, :, ::-1], seed=0))


def test_multi_frame_inputs_skip_by_their_frame_files_and_clash_by_frame_names(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(2)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    frames = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(frames[0]).save(src / "clip.gif", save_all=True, duration=100, loop=0,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    (out / "clip.png").write_bytes(b"an unrelated file")  # a GIF writes clip_frameNNNN.png, never clip.png

    assert inference_main(["-i", str(src), "-o", str(out), "-m", str(checkpoint)]) == 0
    assert "restored 3 of 3" in capsys.readouterr().err
    assert (out / "clip.png").read_bytes() == b"an unrelated file"
    written = {name: (out / name).read_bytes() for name in ("clip_frame0001.png", "clip_frame0002.png",
                                                            "clip_frame0003.png")}
    assert inference_main(["-i", str(src), "-o", str(out), "-m", str(checkpoint)]) == 0  # all frames there
    assert "restored 0 of 3" in (err := capsys.readouterr().err) and "skipped 3 whose output" in err
    assert all((out / name).read_bytes() == data for name, data in written.items())

    # a still named like one of the GIF's frames would write the same file: refused, naming both inputs
    write_image(src / "clip_frame0001.png", frames[0])
    other = tmp_path / "out2"
    assert inference_main(["-i", str(src), "-o", str(other), "-m", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert f"output {other / 'clip_frame0001.png'} is also frame 1 of the output of {src / 'clip.gif'}" in err
    assert (other / "clip_frame0001.png").read_bytes() == written["clip_frame0001.png"]  # the GIF's frame
    # written next to the inputs, the GIF's first frame would replace the still: refused
    still = (src / "clip_frame0001.png").read_bytes()
    assert inference_main(["-i", str(src), "-o", str(src), "-m", str(checkpoint), "--suffix", ""]) == 1
    assert f"would overwrite the input {src / 'clip_frame0001.png'}" in capsys.readouterr().err
    assert (src / "clip_frame0001.png").read_bytes() == still
    assert not (src / "clip_frame0002.png").exists()


# ------------------------------------------------------------------------------ progress and seeds
def test_tiled_images_show_a_tile_progress_bar(tmp_path, checkpoint, capsys):
    images(tmp_path / "in", 1, size=(40, 40))
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(checkpoint),
                           "--tile", "16", "--tile-overlap", "4"]) == 0
    err = capsys.readouterr().err
    counts = re.findall(r"tiles of img0\.png:.*?(\d+)/(\d+)", err)
    assert counts and counts[-1][0] == counts[-1][1] and int(counts[-1][1]) > 1, err


def test_seed_minus_one_prints_the_seed_it_drew_and_that_seed_repeats_the_run(tmp_path, checkpoint, capsys):
    images(tmp_path / "in", 1)
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "a"), "-m", str(checkpoint),
                           "--seed", "-1"]) == 0
    seed = re.search(r"seed: (\d+) \(drawn", capsys.readouterr().err).group(1)
    assert inference_main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "b"), "-m", str(checkpoint),
                           "--seed", seed]) == 0
    assert (tmp_path / "a" / "img0.png").read_bytes() == (tmp_path / "b" / "img0.png").read_bytes()


# ------------------------------------------------------------------------------ clear errors
def test_training_state_as_model_gets_a_short_clear_message(tmp_path, capsys):
    images(tmp_path / "in", 1)
    state = tmp_path / "1000.state"
    torch.save({"iter": 1000, "optimizers": [], "schedulers": []}, state)
    assert inference_main(["-i", str(tmp_path / "in"), "-m", str(state)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {state} is a training state (.state), not network weights; use the .pth in models/ "
                   "(e.g. experiments/NAME/models/net_g_latest.pth)\n")
    assert clean_message(ValueError("\x1b[1m\x1b[31mbad\x1b[0m key")) == "bad key"


def test_onnx_export_without_the_extra_names_it(tmp_path, checkpoint, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnxscript'")

    monkeypatch.setattr("diffir.export.export_onnx", missing)
    assert export_main(["-m", str(checkpoint), "-o", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install "diffir[onnx]"' in capsys.readouterr().err


def test_onnx_export_keeps_an_existing_file_unless_overwrite(tmp_path, checkpoint, monkeypatch, capsys):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's own model")
    assert export_main(["-m", str(checkpoint), "-o", str(target), "--no-check"]) == 2
    assert capsys.readouterr().err == f"error: {target} exists; give --overwrite to replace it\n"
    assert target.read_bytes() == b"the user's own model"
    calls = []
    monkeypatch.setattr("diffir.export.export_onnx", lambda *args, **kwargs: calls.append(kwargs))
    assert export_main(["-m", str(checkpoint), "-o", str(target), "--no-check", "--overwrite"]) == 0
    assert calls and calls[0]["overwrite"] is True


def test_prepare_datasets_says_what_it_wrote(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_datasets", REPO / "scripts" / "prepare_datasets.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    images(tmp_path / "hr", 3, size=(16, 16))
    prepare.main(["--workers", "1", "bicubic", "--input", str(tmp_path / "hr"), "--output", str(tmp_path / "lr"),
                  "--scale", "4"])
    assert capsys.readouterr().out == f"wrote 3 x4 bicubic LR images to {tmp_path / 'lr'}\n"
    assert len(list((tmp_path / "lr").iterdir())) == 3


# ------------------------------------------------------------------------------ several processes
@pytest.mark.slow
def test_torchrun_splits_a_folder_and_matches_one_process_byte_for_byte(tmp_path, checkpoint):
    images(tmp_path / "in", 3, size=(12, 16))
    images(tmp_path / "in2", 2, size=(10, 8), seed=1)  # a second size
    for path in (tmp_path / "in2").iterdir():
        path.rename(tmp_path / "in" / f"small_{path.name}")
    args = ["-i", str(tmp_path / "in"), "-m", str(checkpoint), "--seed", "7"]
    assert inference_main([*args, "-o", str(tmp_path / "one")]) == 0  # one process (this one)

    with socket.socket() as probe:  # a free port, so parallel runs of the suite cannot collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                str(REPO / "inference.py"), *args, "-o", str(tmp_path / "two")]
    run = subprocess.run(torchrun, check=False, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[process 1/2] 3 of the 5 files" in run.stderr and "[process 2/2] 2 of the 5 files" in run.stderr
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 5
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))
