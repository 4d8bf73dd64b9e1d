"""benchmarks/speed.py end to end, on tiny networks: its cases, the PSNR check with trained weights
and the machine-readable last line; benchmarks/gpu_check.py without a GPU and on the CPU."""
import importlib.util
import re
import sys
from pathlib import Path

import cv2
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])


@pytest.fixture()
def speed(monkeypatch):
    """The benchmark module, with its full-size presets swapped for tiny networks."""
    spec = importlib.util.spec_from_file_location("speed_benchmark", REPO / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    for preset in ("sr-x4", "deblur"):
        monkeypatch.setitem(module.PRESETS, preset, {**module.PRESETS[preset], **TINY})
    return module


def run(speed, capsys, *args) -> str:
    speed.main(["--quick", "--repeats", "1", "--train-lr-size", "8", *args])
    return capsys.readouterr().out


def test_fast_path_report(speed, capsys):
    out = run(speed, capsys, "--image", str(REPO / "demo_data" / "val" / "dandelion_field.png"), "--photo-size", "64",
              "--weights", str(REPO / "pretrained" / "demo_DiffIRS2_x4.safetensors"))
    for case in ("infer sr-x4 64x64", "infer sr-x4 128x128", "infer sr-x4 256x256", "infer deblur 256x256",
                 "train S1 b2 8->32", "train S2 b2 8->32"):
        row = re.search(rf"^{case} +1 +([\d.]+) +([\d.]+) +([\d.]+)x +(\S+) +(\d+) +(\d+) ", out, re.MULTILINE)
        assert row, case
        plain, fast, ratio, maxdiff = (float(v) for v in row.groups()[:4])
        assert plain > 0 and fast > 0 and abs(ratio - plain / fast) <= 0.01 * ratio + 0.01 and maxdiff <= 1e-4
        assert float(row[5]) > 0  # peak memory of the plain side
    assert re.search(r"x4 SR, 1 thread\(s\): [\d.]+ s per output megapixel plain", out)
    assert re.search(r"CPEN_S2 \+ 4 denoiser steps [\d.]+ ms = [\d.]+% of inference", out)
    psnr = re.search(r"trained weights\): plain fp32 ([\d.]+) dB, fast fp32 ([\d.]+) dB, difference ([\d.]+) dB", out)
    assert psnr and float(psnr[1]) > 20 and float(psnr[3]) <= 1e-3
    last = re.fullmatch(r"speedup inference=([\d.]+) train=([\d.]+) maxdiff=(\S+) memory=([\d.]+)",
                        out.strip().splitlines()[-1])
    assert last and float(last[1]) > 0 and float(last[2]) > 0 and float(last[3]) <= 1e-4 and float(last[4]) > 0


def test_plain_bf16_side(speed, capsys):
    """--fast-impl plain --dtype bf16 measures reduced precision alone: only rounding differs."""
    out = run(speed, capsys, "--fast-impl", "plain", "--dtype", "bf16")
    assert "compared side: impl=plain, bf16" in out
    maxdiff = float(out.strip().splitlines()[-1].split("maxdiff=")[1].split()[0])
    assert 0 < maxdiff <= 0.1


def test_cases_option_runs_only_the_chosen_cases(speed, capsys):
    out = run(speed, capsys, "--cases", "64x64,train S1", "--train-lr-size", "8,16")
    rows = re.findall(r"^((?:infer|train) .+?) +1 +[\d.]+ ", out, re.MULTILINE)
    assert rows == ["infer sr-x4 64x64", "train S1 b2 8->32", "train S1 b2 16->64"]
    assert "per output megapixel" not in out and "denoiser steps" not in out  # their cases were left out
    assert re.fullmatch(r"speedup inference=[\d.]+ train=[\d.]+ maxdiff=\S+ memory=nan", out.strip().splitlines()[-1])
    with pytest.raises(SystemExit, match="matches none of: infer sr-x4 64x64"):
        run(speed, capsys, "--cases", "128x256")


@pytest.mark.parametrize("compile_mode", [None, "default"])
def test_no_timed_call_compiles(speed, capsys, compile_mode):
    """Dynamo guards the thread count, so a compiled network recompiles when it changes: the first call
    is made at the first thread count measured, and a compiled side gets an untimed call at each new one."""
    commands = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def ask(self, command, argument=None):
            commands.append((self.name, command, argument))
            return (torch.zeros(1), 1.0, 1.0) if command == "case" else 1.0

    case = speed.Case("infer sr-x4 8x8", {}, 2, False, 8)
    workers = {name: Recorder(name) for name in ("plain", "fast")}
    speed.measure(case, workers, speed.Setup(compile_mode=compile_mode), [1, 2], repeats=2)
    fast = [(command, argument) for name, command, argument in commands if name == "fast"]
    warm_up = [("run", None)] if compile_mode else []
    assert fast == [("threads", 1), ("case", fast[1][1]), ("threads", 1), ("run", None), ("run", None),
                    ("threads", 2), *warm_up, ("run", None), ("run", None)]
    assert [c for c in commands if c[0] == "plain" and c[1] == "run"] == [("plain", "run", None)] * 4
    capsys.readouterr()


def test_photo_is_read_as_rgb_centre_crop(speed, tmp_path):
    path = REPO / "demo_data" / "val" / "dandelion_field.png"
    bgr = cv2.imread(str(path))
    expected = torch.from_numpy(bgr[8:208, 92:292, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(speed.load_photo(str(path), 200), expected)
    with pytest.raises(ValueError, match=r"is 384x216, smaller than the 256x256 crop"):
        speed.load_photo(str(path), 256)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="--image: cannot read .*bad.png as an image"):
        speed.load_photo(str(tmp_path / "bad.png"), 64)


@pytest.fixture()
def gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_skips_without_a_gpu(gpu_check, monkeypatch, capsys):
    module = gpu_check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert module.main([]) == 0
    assert capsys.readouterr().out == "gpu_check: no CUDA device; skipped the GPU cases (nothing measured)\n"
    # what it measures on a GPU builds from the repository alone: the official x4 SR DIRformer
    options = module.sr_x4_options()
    assert options["dim"] == 64 and options["num_blocks"] == [13, 1, 1, 1] and options["scale"] == 4
    net = module.load_archs().DIRformer(**{**options, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1})
    assert net(torch.rand(1, 3, 8, 8), torch.randn(1, 256)).shape == (1, 3, 32, 32)


def test_gpu_check_options(gpu_check):
    option = gpu_check.Option.parse("compile reduce-overhead bf16w+tail")
    assert (option.compile_mode, option.flags, option.autocast) == ("reduce-overhead", {"bf16w", "tail"}, True)
    assert not gpu_check.Option.parse("cl+fast").autocast
    with pytest.raises(ValueError, match=r"unknown flags \['x'\]"):
        gpu_check.Option.parse("bf16+x")
    with pytest.raises(ValueError, match="'compile' is followed by a mode"):
        gpu_check.Option.parse("compile tail")


def test_gpu_check_table_on_the_cpu(gpu_check, capsys):
    """The whole table on the CPU (full-size network, 8x8 LR): the composite tail on the plain blocks
    gives the plain output to rounding, bfloat16 weights do not, and the training rows are measured."""
    assert gpu_check.main(["--device", "cpu", "--sizes", "8", "--repeats", "1", "--options", "tail,bf16w",
                           "--train-options", "tail", "--batch", "1", "--train-lr", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {(line[:20].strip(), line[21:53].strip()): line[53:].split() for line in lines[2:-1]}
    assert list(rows) == [("infer LR 8x8", "plain fp32"), ("infer LR 8x8", "tail"), ("infer LR 8x8", "bf16w"),
                          ("train b1 8->32", "plain fp32"), ("train b1 8->32", "tail")]
    max_diff = {option: float(row[3]) for (case, option), row in rows.items() if case.startswith("infer")}
    assert max_diff["plain fp32"] == 0 and max_diff["tail"] <= 1e-5 < 1e-3 <= max_diff["bf16w"]
    assert all(float(row[0]) > 0 and row[1].endswith("x") for row in rows.values())
    assert lines[-1].startswith("total ")


def test_gpu_check_profile_on_the_cpu(gpu_check, capsys):
    """--profile splits a case's time by kind of operator (kernel on a GPU), and the kinds add up to it."""
    assert gpu_check.main(["--device", "cpu", "--sizes", "", "--options", "", "--train-options", "",
                           "--profile", "tail@8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("profile:"))
    total = float(re.fullmatch(r"profile: tail at LR 8x8, 3 calls: ([\d.]+) ms per call", header)[1])
    body = lines[lines.index(header) + 1:-1]
    kinds = {kind: float(ms) for kind, ms in (re.fullmatch(r"  (.+?) +([\d.]+) ms +[\d.]+%", line).groups()
                                              for line in body if line.endswith("%"))}
    assert kinds["convolution"] > 0 and kinds["matrix product"] > 0
    assert sum(kinds.values()) == pytest.approx(total, rel=0.01)
    top = [line.split() for line in body if not line.endswith("%")]  # ms, "ms", calls per call, name
    assert len(top) == gpu_check.PROFILE_TOP and all(row[3].startswith("aten::") for row in top)
    times = [float(row[0]) for row in top]
    assert times == sorted(times, reverse=True) and sum(times) <= total * 1.01


@pytest.mark.parametrize("case", ["tail", "tail@0", "tail@x"])
def test_gpu_check_profile_needs_option_at_size(gpu_check, capsys, case):
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--profile", case])
    assert "expected OPTION@SIZE" in capsys.readouterr().err


def test_gpu_check_kernel_kinds(gpu_check):
    """CUDA kernel names of the kinds a profile of the DIRformer shows (as cuDNN, cuBLAS, PyTorch and
    inductor name them), each filed under its kind."""
    kinds = {
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
        "void at::native::conv_depthwise2d_forward_kernel<float, int>": "convolution",
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNN": "matrix product",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matrix product",
        "void splitKreduce_kernel<32, 16, int, float, float>": "matrix product",
        "void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4>": "matrix product",
        "triton_poi_fused_convolution_gelu_mul_3": "fused by inductor (triton)",
        "triton_tem_fused_mm_0": "matrix product (triton template)",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>": "normalisation",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, MeanOps>>": "softmax, reduction",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>": "elementwise",
        "Memcpy DtoD (Device -> Device)": "copy, layout",
        "void cudnn::ops::nchwToNhwcKernel<float, float, float, false, true>": "copy, layout",
    }
    assert {name: gpu_check.kernel_kind(name) for name in kinds} == kinds
