"""The ComfyUI custom-node folder (comfyui_diffir/), tested without ComfyUI: its node is called on tensors
in ComfyUI's layout, and ComfyUI's hooks (folder_paths, comfy.utils.ProgressBar) are stood in for."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import spandrel
import torch

from diffir import Restorer
from diffir.archs.diffir_arch import DiffIRS2
from diffir.checkpoint import blend_state_dicts
from diffir.restorer import initial_noise
from diffir.utils.safetensors_io import save_state_dict

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "pretrained" / "demo_DiffIRS2_x4.safetensors"
TINY = dict(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])


def load_custom_node_folder():
    """Import comfyui_diffir/ the way ComfyUI imports a custom_nodes/ folder (module named after the folder)."""
    folder = REPO / "comfyui_diffir"
    spec = importlib.util.spec_from_file_location("ComfyUI-DiffIR", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nodes():
    return load_custom_node_folder()


def comfy_image(batch=2, height=20, width=28, seed=0):
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))  # (B, H, W, C)


def run(node, image, model, **kwargs):
    args = dict(task="auto", seed=0, tile=0, tile_overlap=32, model2="none", blend=0.0)
    return node.restore(image, model, **{**args, **kwargs})[0]


def test_folder_registers_diffir_with_spandrel_and_declares_a_comfyui_node(nodes):
    assert "DiffIR" in spandrel.MAIN_REGISTRY  # the built-in Load Upscale Model node goes through spandrel
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS.keys() == nodes.NODE_CLASS_MAPPINGS.keys()
    cls = nodes.NODE_CLASS_MAPPINGS["DiffIRRestore"]
    inputs = cls.INPUT_TYPES()
    assert {"image", "model", "task", "seed", "tile", "tile_overlap", "model2", "blend"} <= inputs["required"].keys()
    assert inputs["required"]["image"] == ("IMAGE",) and inputs["optional"]["mask"][0] == "MASK"
    assert cls.RETURN_TYPES == ("IMAGE",) and callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY


def test_node_output_is_the_restorers_in_comfyui_layout(nodes):
    node = nodes.NODE_CLASS_MAPPINGS["DiffIRRestore"]()
    image = comfy_image()
    out = run(node, image, str(DEMO), seed=7)
    assert out.shape == (2, 80, 112, 3) and out.dtype == torch.float32
    restorer = Restorer.from_pretrained(DEMO, device="cpu")
    expected = restorer.restore_tensor(image.permute(0, 3, 1, 2), noise=initial_noise(2, 7)).clamp(0, 1)
    torch.testing.assert_close(out, expected.permute(0, 2, 3, 1), rtol=0, atol=1e-6)
    assert not torch.equal(out, run(node, image, str(DEMO), seed=8))  # the seed matters
    tiled = run(node, image, str(DEMO), seed=7, tile=16, tile_overlap=8)
    assert tiled.shape == out.shape and (tiled - out).abs().mean() < 0.05


def test_blend_of_two_checkpoints(nodes, tmp_path):
    node = nodes.NODE_CLASS_MAPPINGS["DiffIRRestore"]()
    nets = []
    for seed, name in ((0, "fidelity"), (1, "perception")):
        torch.manual_seed(seed)
        nets.append(DiffIRS2(**TINY, scale=4).eval())
        save_state_dict(nets[-1].state_dict(), tmp_path / f"{name}.safetensors")
    first, second = str(tmp_path / "fidelity.safetensors"), str(tmp_path / "perception.safetensors")
    image = comfy_image(batch=1)
    lq = image.permute(0, 3, 1, 2)

    def restored(net):
        return Restorer(net, device="cpu").restore_tensor(lq, noise=initial_noise(1, 0)).clamp(0, 1).permute(0, 2, 3, 1)

    torch.testing.assert_close(run(node, image, first, model2=second, blend=0.0), restored(nets[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(run(node, image, first, model2=second, blend=1.0), restored(nets[1]), rtol=0, atol=1e-6)
    half = DiffIRS2(**TINY, scale=4).eval()
    half.load_state_dict(blend_state_dicts(nets[0].state_dict(), nets[1].state_dict(), 0.5))
    torch.testing.assert_close(run(node, image, first, model2=second, blend=0.5), restored(half), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="blend needs a second model"):
        run(node, image, first, blend=0.5)


def test_inpainting_with_a_comfyui_mask(nodes, tmp_path):
    torch.manual_seed(0)
    net = DiffIRS2(**TINY, inp_channels=4).eval()
    save_state_dict(net.state_dict(), tmp_path / "inpaint.safetensors")
    node = nodes.NODE_CLASS_MAPPINGS["DiffIRRestore"]()
    image, mask = comfy_image(batch=2), torch.zeros(20, 28)
    mask[4:12, 6:20] = 1  # ComfyUI MASK: 1 = fill
    out = run(node, image, str(tmp_path / "inpaint.safetensors"), task="inpaint", mask=mask)
    keep = (mask == 0)[None, :, :, None].expand_as(out)
    assert torch.equal(out[keep], image[keep])
    assert not torch.allclose(out[:, 4:12, 6:20], image[:, 4:12, 6:20])
    with pytest.raises(ValueError, match="connect a MASK"):
        run(node, image, str(tmp_path / "inpaint.safetensors"))
    with pytest.raises(ValueError, match="--task sr but the model does inpaint"):
        run(node, image, str(tmp_path / "inpaint.safetensors"), task="sr", mask=mask)


def test_comfyui_model_folder_and_progress_bar_are_used(nodes, monkeypatch):
    updates = []

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None):
            updates.append((value, total or self.total))

    folder_paths = types.SimpleNamespace(
        get_filename_list=lambda folder: ["demo.safetensors"] if folder == "upscale_models" else [],
        get_full_path=lambda folder, name: str(DEMO) if (folder, name) == ("upscale_models", "demo.safetensors")
        else None)
    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    cls = nodes.NODE_CLASS_MAPPINGS["DiffIRRestore"]
    assert cls.INPUT_TYPES()["required"]["model"] == (["demo.safetensors"],)
    assert cls.INPUT_TYPES()["required"]["model2"] == (["none", "demo.safetensors"],)
    out = run(cls(), comfy_image(batch=3, height=8, width=8), "demo.safetensors")
    assert out.shape == (3, 32, 32, 3)
    assert updates and updates[-1][0] == updates[-1][1]  # finished: done == total
    assert [value for value, _ in updates] == sorted(value for value, _ in updates)
    with pytest.raises(FileNotFoundError, match="not in ComfyUI's models/upscale_models"):
        run(cls(), comfy_image(batch=1), "missing.pth")
