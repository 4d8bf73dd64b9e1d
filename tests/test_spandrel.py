"""DiffIR in spandrel (diffir.integrations.spandrel), with the real spandrel package."""
from pathlib import Path

import pytest
import torch
from spandrel import (
    MAIN_REGISTRY,
    ArchRegistry,
    ImageModelDescriptor,
    MaskedImageModelDescriptor,
    ModelLoader,
    ModelTiling,
    UnsupportedModelError,
    canonicalize_state_dict,
)
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.NAFNet import NAFNet
from spandrel.architectures.SwinIR import SwinIR

import diffir.integrations.spandrel as diffir_spandrel
from diffir import Restorer
from diffir.archs.diffir_arch import DiffIRS1, DiffIRS2
from diffir.archs.dirformer import DIRformer
from diffir.convert import main as convert_main
from diffir.restorer import initial_noise
from diffir.zoo import PRESETS

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pretrained" / "demo_DiffIRS2_x4.safetensors"
TINY = dict(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
            ffn_expansion_factor=2.2, bias=False, LayerNorm_type="BiasFree")
# every stage-two variant, tiny; (purpose, scale, input multiple)
VARIANTS = {
    "sr-x4": (dict(TINY, scale=4), "SR", 4, 8),
    "sr-x2": (dict(TINY, scale=2), "SR", 2, 16),
    "sr-x1": (dict(TINY, scale=1), "Restoration", 1, 32),
    "deblur": (dict(TINY, bias=True, LayerNorm_type="WithBias"), "Restoration", 1, 8),
    "inpaint": (dict(TINY, inp_channels=4, num_refinement_blocks=0, LayerNorm_type="WithBias"), "Inpainting", 1, 8),
}

diffir_spandrel.install()


def tiny_state_dict(name, cls=DiffIRS2, seed=0):
    torch.manual_seed(seed)
    return cls(**VARIANTS[name][0]).state_dict()


def detected_by(state_dict):
    """The ids of every architecture of spandrel's main registry whose detection accepts ``state_dict``."""
    state_dict = canonicalize_state_dict(state_dict)
    return [arch.architecture.id for arch in MAIN_REGISTRY.architectures("detection") if arch.detect(state_dict)]


def test_install_is_idempotent():
    registry = ArchRegistry()
    assert diffir_spandrel.install(registry) is True
    assert diffir_spandrel.install(registry) is False
    assert [arch.architecture.id for arch in registry] == ["DiffIR"]
    assert "DiffIR" in MAIN_REGISTRY


# every variant in the official release layout, and every layout of a checkpoint with one variant each
CASES = [(name, "params") for name in VARIANTS] + [("sr-x2", "params_ema"), ("deblur", "bare"),
                                                   ("sr-x1", "module"), ("inpaint", "lightning")]


@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}-{layout}" for n, layout in CASES])
def test_every_tiny_variant_and_layout_is_detected_and_described(name, layout):
    _, purpose, scale, multiple = VARIANTS[name]
    state_dict = tiny_state_dict(name)
    wrapped = {"params": {k: v + 1 for k, v in state_dict.items()}, "params_ema": state_dict} \
        if layout == "params_ema" else {
            "params": {"params": state_dict}, "bare": state_dict,
            "module": {f"module.{k}": v for k, v in state_dict.items()},
            "lightning": {"state_dict": {**{f"generator.{k}": v for k, v in state_dict.items()},
                                         "discriminator.model0.0.weight": torch.zeros(4, 3, 4, 4)}},
        }[layout]
    assert detected_by(wrapped) == ["DiffIR"]
    model = ModelLoader().load_from_state_dict(wrapped)
    assert isinstance(model, MaskedImageModelDescriptor if purpose == "Inpainting" else ImageModelDescriptor)
    assert isinstance(model.model, DiffIRS2)
    assert (model.purpose, model.scale, model.input_channels, model.output_channels) == (purpose, scale, 3, 3)
    assert model.size_requirements.multiple_of == multiple
    assert model.architecture.name == "DiffIR" and model.tags[:3] == ["DiffIR", "DiffIRS2", name]
    assert model.supports_half and model.supports_bfloat16 and model.tiling == ModelTiling.DISCOURAGED
    # the EMA weights are the ones loaded when both are there (as basicsr's params_ema)
    for key, value in state_dict.items():
        assert torch.equal(model.model.state_dict()[key], value), key


@pytest.mark.filterwarnings("ignore:for diffusion.betas. copying from a non-meta parameter")
@pytest.mark.parametrize("name", list(PRESETS))
def test_full_size_official_configurations_are_detected(name):
    """The official key layouts and shapes (built on the meta device: no memory, no weights)."""
    betas = tiny_state_dict("sr-x4")["diffusion.betas"]  # read as numbers: a real tensor (same schedule)
    with torch.device("meta"):
        state_dict = DiffIRS2(**{k: v for k, v in PRESETS[name].items() if k != "type"}).state_dict()
        state_dict["diffusion.betas"] = betas
        assert detected_by({"params": state_dict}) == ["DiffIR"]
        model = MAIN_REGISTRY.load({"params": state_dict})  # the loader's .to(cpu) cannot copy meta tensors
    expected_scale = PRESETS[name].get("scale", 1)
    assert model.scale == expected_scale and f"official-{name}" in model.tags
    assert model.size_requirements.multiple_of == {"sr-x2": 16, "sr-x1": 32}.get(name, 8)
    assert model.purpose == ("Inpainting" if name.startswith("inpaint") else "SR" if expected_scale > 1
                             else "Restoration")


@pytest.mark.parametrize("name", ["sr-x4", "sr-x2", "sr-x1", "deblur"])
def test_output_equals_restorer_with_seed_zero(name):
    state_dict = tiny_state_dict(name)
    model = ModelLoader().load_from_state_dict({"params": state_dict}).eval()
    torch.manual_seed(1)
    image = torch.rand(2, 3, 21, 35)  # not a multiple of the size: spandrel pads, as Restorer does
    out = model(image)
    restorer = Restorer(model.model, device="cpu")
    expected = restorer.restore_tensor(image, noise=initial_noise(2, 0)).clamp(0, 1)
    scale = VARIANTS[name][2]
    assert out.shape == (2, 3, 21 * scale, 35 * scale)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out.std() > 0.01  # a real image, not a constant


def test_inpainting_takes_image_and_mask_and_keeps_the_known_pixels():
    model = ModelLoader().load_from_state_dict({"params": tiny_state_dict("inpaint")})
    torch.manual_seed(2)
    image, mask = torch.rand(1, 3, 20, 28), torch.zeros(1, 1, 20, 28)
    mask[..., 5:12, 9:20] = 1
    out = model(image, mask)
    expected = Restorer(model.model, device="cpu").restore_tensor(image, mask, initial_noise(1, 0)).clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.equal(out[mask.expand_as(out) == 0], image[mask.expand_as(image) == 0])
    assert not torch.allclose(out[..., 5:12, 9:20], image[..., 5:12, 9:20])


def test_official_pth_and_converted_safetensors_files_restore_alike(tmp_path):
    pth, safetensors = tmp_path / "DiffIRS2.pth", tmp_path / "DiffIRS2.safetensors"
    torch.save({"params": tiny_state_dict("sr-x2")}, pth)  # the official release layout
    assert convert_main([str(pth), str(safetensors)]) == 0
    torch.manual_seed(3)
    image = torch.rand(1, 3, 32, 48)
    outputs = []
    for path in (pth, safetensors):
        model = ModelLoader().load_from_file(path)
        assert (model.architecture.id, model.scale) == ("DiffIR", 2)
        outputs.append(model(image))
    assert outputs[0].shape == (1, 3, 64, 96)
    assert torch.equal(outputs[0], outputs[1])
    restorer = Restorer.from_pretrained(safetensors, device="cpu")
    torch.testing.assert_close(outputs[0], restorer.restore_tensor(image, noise=initial_noise(1, 0)).clamp(0, 1),
                               rtol=0, atol=1e-6)


def test_same_image_same_output_in_every_call():
    model = ModelLoader().load_from_file(DEMO)
    image = torch.rand(1, 3, 16, 24)
    torch.manual_seed(123)  # the global generator does not matter: the noise is drawn from seed 0
    first = model(image)
    torch.manual_seed(456)
    assert torch.equal(first, model(image))


def test_half_and_bfloat16_on_the_demo_model_match_float32():
    model = ModelLoader().load_from_file(DEMO).eval()
    torch.manual_seed(4)
    image = torch.rand(1, 3, 24, 32)
    reference = model(image)
    for dtype, tolerance in ((torch.float16, 0.01), (torch.bfloat16, 0.05)):
        model.to(dtype)
        assert model.dtype == dtype
        out = model(image.to(dtype))
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.float() - reference).abs().max() < tolerance, dtype
        model.float()
    assert model.to("cpu").device == torch.device("cpu")


def test_stage_one_files_are_refused_with_the_reason():
    state_dict = tiny_state_dict("sr-x4", DiffIRS1)
    assert detected_by({"params": state_dict}) == ["DiffIR"]
    with pytest.raises(UnsupportedModelError, match="stage-one .* needs the ground-truth image"):
        ModelLoader().load_from_state_dict({"params": state_dict})


def spandrel_state_dicts():
    """Tiny state dicts of other architectures, built with spandrel's own classes (and a bare DIRformer,
    the Restormer-like DiffIR backbone without its prior: not a DiffIR checkpoint)."""
    torch.manual_seed(0)
    return {
        "SwinIR": SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                         upsampler="pixelshuffle").state_dict(),
        "ESRGAN": ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(),
        "NAFNet": NAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1]).state_dict(),
        None: DIRformer(inp_channels=3, out_channels=3, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                        heads=[1, 1, 2, 2], ffn_expansion_factor=2.2, bias=False,
                        LayerNorm_type="BiasFree").state_dict(),
    }


def test_other_architectures_are_not_taken_for_diffir():
    for arch_id, state_dict in spandrel_state_dicts().items():
        assert not diffir_spandrel.detect(canonicalize_state_dict(state_dict)), arch_id
        if arch_id is None:
            with pytest.raises(UnsupportedModelError):
                ModelLoader().load_from_state_dict(state_dict)
        else:
            assert ModelLoader().load_from_state_dict(state_dict).architecture.id == arch_id


@pytest.mark.parametrize("name", VARIANTS)
def test_no_other_spandrel_architecture_detects_diffir(name):
    for cls in (DiffIRS1, DiffIRS2):
        assert detected_by({"params": tiny_state_dict(name, cls)}) == ["DiffIR"]

