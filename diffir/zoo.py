"""The model zoo: every official DiffIR checkpoint, plus the bundled demo model.

Each entry names the file as it is expected under ``pretrained/`` (one sub-folder per official
release, so that the releases' identical file names cannot collide), where to download it, its task
and scale, and the official network configuration (``PRESETS``). The official files are shared as
Google Drive folders without published checksums, so ``sha256`` is None ("unknown") for them;
:func:`resolve` checks the SHA-256 whenever an entry has one.

``pretrained/`` is looked up in ``$DIFFIR_PRETRAINED``, then ``./pretrained``, then next to the
diffir package (the repository checkout).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_S1_ONLY = ("n_denoise_res", "linear_start", "linear_end", "timesteps")
_DIFFUSION = {"n_denoise_res": 1, "linear_start": 0.1, "linear_end": 0.99, "timesteps": 4}


def _stage_two(**network) -> dict:
    return {"type": "DiffIRS2", **network, **_DIFFUSION}


def stage_one(options: dict) -> dict:
    """The DiffIRS1 options of the same configuration (CPEN_S1 instead of CPEN_S2 + diffusion)."""
    return {"type": "DiffIRS1", **{k: v for k, v in options.items() if k not in _S1_ONLY and k != "type"}}


_SR = dict(n_encoder_res=9, inp_channels=3, out_channels=3, dim=64, num_blocks=[13, 1, 1, 1],
           num_refinement_blocks=13, heads=[1, 2, 4, 8], ffn_expansion_factor=2.2, bias=False,
           LayerNorm_type="BiasFree")
_INPAINT = dict(n_encoder_res=5, inp_channels=4, out_channels=3, dim=52, num_blocks=[1, 1, 1, 9],
                num_refinement_blocks=0, heads=[1, 2, 4, 8], ffn_expansion_factor=1.8, bias=False,
                LayerNorm_type="WithBias")

# Official stage-two network configurations (paper-facts §2), by preset name.
PRESETS: dict[str, dict] = {
    "sr-x4": _stage_two(**_SR, scale=4),
    "sr-x2": _stage_two(**_SR, scale=2),
    "sr-x1": _stage_two(**_SR, scale=1),
    "deblur": _stage_two(n_encoder_res=5, inp_channels=3, out_channels=3, dim=48, num_blocks=[3, 5, 6, 6],
                         num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2, bias=False,
                         LayerNorm_type="WithBias"),
    "inpaint": _stage_two(**_INPAINT),
    "inpaint-big": _stage_two(**{**_INPAINT, "num_blocks": [1, 1, 1, 20], "n_encoder_res": 8}),
}

_DRIVE = "https://drive.google.com/drive/folders/"
_SISR_URL = _DRIVE + "1Mmhz6Sx9tz-n3QJAd6w-UlxdugTEH2fV"
_REALSR_URL = _DRIVE + "1G3Ep0xd-uBpIXGZFdWzH1uVCOpJaqkOF"
_REALSR_X1_URL = _DRIVE + "154TGJ7wPSQKmhZBXH4ujLFk3WG_VyClV"  # DiffIR issue #11
_REALSR_X1_V2_URL = _DRIVE + "1goG_l6S0EjK2383UVzXxwLInw-O_SLwO"  # DiffIR issue #11
_DEBLUR_URL = _DRIVE + "1JWYaP9VVPX_Mh2w1Vezn74hck-oWSyMh"
_INPAINT_URL = _DRIVE + "1RQXRWMqVaAsyyQt8T-3KtpS68ef8dh90"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str  # 'sr', 'realsr', 'deblur' or 'inpaint' (inference.py --task)
    scale: int
    file: str  # path under pretrained/
    url: str  # where to download it (or how to make it)
    network: dict | None  # network_g options; None: inferred from the checkpoint's weights
    option: str  # our option file for this model (repository path), '' if none
    official_option: str = ""  # the official repository's option file
    sha256: str | None = None  # None: unknown
    note: str = ""


def _entries() -> list[ZooEntry]:
    srgan, realsr = "DiffIR-SRGAN/options/", "DiffIR-RealSR/options/"
    inpaint = "DiffIR-inpainting/configs/training/"
    assumed = "file name assumed (the release does not state it): rename the download to this name"
    s1 = "stage one (needs the ground truth): for training stage two, not for inference"
    return [
        ZooEntry("demo-sr-x4", "sr", 4, "demo_DiffIRS2_x4.safetensors",
                 "the demo recipe: bash scripts/demo.sh, then diffir-convert "
                 "experiments/demo_DiffIRS2_x4/models/net_g_latest.pth demo_DiffIRS2_x4.safetensors "
                 "(it ships in the repository's pretrained/)",
                 None, "options/demo/train_demo_DiffIRS2_x4.yml",
                 # converted from the .pth with SHA-256 1ea21012...cf26e7cd (recorded in the file's metadata)
                 sha256="f33022dd33b23572a6306c7039bb164e95d154417777b3a18f8c6d470a579b4b",
                 note="DEMO model: tiny, trained briefly on the bundled photos; not the paper's quality"),
        ZooEntry("sisr-gan-x4", "sr", 4, "sisr/SISR-DiffIRS2-GAN.pth", _SISR_URL, PRESETS["sr-x4"],
                 "options/test/SR/test_DiffIRS2_GAN_x4.yml", srgan + "test_DiffIRS2_GAN_x4.yml",
                 note="bicubic x4 SR, GAN-trained stage two (paper Table 2)"),
        ZooEntry("sisr-s1-x4", "sr", 4, "sisr/SISR-DiffIRS1.pth", _SISR_URL, stage_one(PRESETS["sr-x4"]),
                 "options/train/SR/train_DiffIRS1_x4.yml", srgan + "train_DiffIRS1_x4.yml", note=s1),
        ZooEntry("realsr-s1-x4", "realsr", 4, "realsr/DiffIRS1.pth", _REALSR_URL, stage_one(PRESETS["sr-x4"]),
                 "options/train/RealSR/train_DiffIRS1_x4.yml", realsr + "train_DiffIRS1_x4.yml", note=s1),
        ZooEntry("realsr-l1-x4", "realsr", 4, "realsr/DiffIRS2.pth", _REALSR_URL, PRESETS["sr-x4"],
                 "options/train/RealSR/train_DiffIRS2_x4.yml", realsr + "train_DiffIRS2_x4.yml",
                 note="L1-trained stage two: the fidelity end for --blend with realsr-gan-x4"),
        ZooEntry("realsr-gan-x4", "realsr", 4, "realsr/DiffIRS2-GAN.pth", _REALSR_URL, PRESETS["sr-x4"],
                 "options/test/RealSR/test_DiffIRS2_GAN_x4.yml", realsr + "test_DiffIRS2_GAN_x4.yml",
                 note="real-world x4 SR, V1: better fidelity (paper Table 3)"),
        ZooEntry("realsr-gan-v2-x4", "realsr", 4, "realsr/DiffIRS2-GANv2.pth", _REALSR_URL, PRESETS["sr-x4"],
                 "options/test/RealSR/test_DiffIRS2_GAN_x4.yml", realsr + "test_DiffIRS2_GAN_x4.yml",
                 note="V2: better perceptual quality and denoising"),
        ZooEntry("realsr-gan-x2", "realsr", 2, "realsr/DiffIRS2-GANx2.pth", _REALSR_URL, PRESETS["sr-x2"],
                 "options/test/RealSR/test_DiffIRS2_GAN_x2.yml", realsr + "test_DiffIRS2_GAN_x2.yml", note=assumed),
        ZooEntry("realsr-gan-v2-x2", "realsr", 2, "realsr/DiffIRS2-GANx2-V2.pth", _REALSR_URL, PRESETS["sr-x2"],
                 "options/test/RealSR/test_DiffIRS2_GAN_x2.yml", realsr + "test_DiffIRS2_GAN_x2.yml", note=assumed),
        ZooEntry("realsr-gan-x1", "realsr", 1, "realsr/DiffIRS2-GANx1.pth", _REALSR_X1_URL, PRESETS["sr-x1"],
                 "options/test/RealSR/test_DiffIRS2_GAN_x1.yml", realsr + "test_DiffIRS2_GAN_x1.yml", note=assumed),
        ZooEntry("realsr-gan-v2-x1", "realsr", 1, "realsr/DiffIRS2-GANx1-V2.pth", _REALSR_X1_V2_URL,
                 PRESETS["sr-x1"], "options/test/RealSR/test_DiffIRS2_GAN_x1.yml",
                 realsr + "test_DiffIRS2_GAN_x1.yml", note=assumed),
        ZooEntry("gopro-deblur", "deblur", 1, "deblur/DiffIRS2.pth", _DEBLUR_URL, PRESETS["deblur"],
                 "options/test/Deblur/test_DiffIRS2.yml", "DiffIR-demotionblur/options/test_DiffIRS2.yml",
                 note="motion deblurring, GoPro-trained (paper Table 4); " + assumed),
        ZooEntry("celeba-inpaint", "inpaint", 1, "inpaint/DiffIRS2-celeba/models/last.ckpt", _INPAINT_URL,
                 PRESETS["inpaint"], "", inpaint + "DiffIRS2-celeba.yaml",
                 note="Lightning checkpoint of the official LaMa-based code (paper Table 1, CelebA-HQ)"),
        ZooEntry("places-inpaint", "inpaint", 1, "inpaint/DiffIRS2-place/models/last.ckpt", _INPAINT_URL,
                 PRESETS["inpaint"], "", inpaint + "DiffIRS2-place2.yaml",
                 note="Lightning checkpoint of the official LaMa-based code (paper Table 1, Places)"),
        ZooEntry("places-big-inpaint", "inpaint", 1, "inpaint/Big-DiffIRS2-place/models/last.ckpt", _INPAINT_URL,
                 PRESETS["inpaint-big"], "", inpaint + "DiffIRbigdataS2-place2.yaml",
                 note="Places2-Challenge model; Lightning checkpoint"),
    ]


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _entries()}

# The model inference.py uses when no -m is given, per (task, scale).
DEFAULT_MODELS = {("sr", 4): "demo-sr-x4", ("realsr", 4): "realsr-gan-x4", ("realsr", 2): "realsr-gan-x2",
                  ("realsr", 1): "realsr-gan-x1", ("deblur", 1): "gopro-deblur", ("inpaint", 1): "celeba-inpaint"}


class ModelNotFoundError(FileNotFoundError):
    """A zoo model whose file is not in pretrained/ (the message says where to download it)."""


def pretrained_dirs() -> list[Path]:
    """The folders searched for zoo files, in order."""
    dirs = [Path(os.environ["DIFFIR_PRETRAINED"])] if os.environ.get("DIFFIR_PRETRAINED") else []
    dirs += [Path.cwd() / "pretrained", Path(__file__).resolve().parent.parent / "pretrained"]
    return list(dict.fromkeys(dirs))


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise KeyError(f"no model named {name!r} in the zoo; known models: {', '.join(ZOO)}")
    return ZOO[name]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(name: str) -> Path:
    """The local file of zoo model ``name``; raises ModelNotFoundError saying where to download it."""
    entry = get_entry(name)
    folders = pretrained_dirs()
    for folder in folders:
        path = folder / entry.file
        if path.is_file():
            if entry.sha256 and sha256_file(path) != entry.sha256:
                raise ValueError(f"{path} does not have the SHA-256 of {name} ({entry.sha256}): "
                                 f"the download is incomplete or a different file; download it again from {entry.url}")
            return path
    target = folders[-1] / entry.file
    raise ModelNotFoundError(f"model {name!r} needs the file {entry.file!r}, which is not in "
                             f"{' or '.join(str(d) for d in folders)}. Get it from {entry.url} "
                             f"and save it as {target}" + (f" ({entry.note})" if entry.note else ""))


def find_model(model: str | Path) -> tuple[Path, ZooEntry | None]:
    """A checkpoint path, or a zoo name resolved to its file (with its entry)."""
    if Path(model).is_file():
        return Path(model), None
    if str(model) in ZOO:
        return resolve(str(model)), ZOO[str(model)]
    raise FileNotFoundError(f"{model!r} is neither a checkpoint file nor a zoo model name; "
                            f"zoo models: {', '.join(ZOO)}")


def network_options(spec: str | Path) -> dict:
    """Network options from a preset name (see PRESETS) or an option YAML's ``network_g`` block."""
    if str(spec) in PRESETS:
        return dict(PRESETS[str(spec)])
    if not Path(spec).is_file():
        raise FileNotFoundError(f"{spec!r} is neither an option file nor a preset ({', '.join(PRESETS)})")
    from .options import load_yaml

    options = load_yaml(str(spec)).get("network_g")
    if not isinstance(options, dict):
        raise ValueError(f"option file {spec} has no 'network_g' block describing the network")
    return dict(options)
