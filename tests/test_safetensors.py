"""Safetensors everywhere weights are read, diffir-convert, and training's logger.save_format."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from basicsr.utils.options import ordered_yaml

import diffir.archs.detect
from diffir import Restorer
from diffir.archs.diffir_arch import DiffIRS1, DiffIRS2
from diffir.archs.detect import infer_network_options
from diffir.checkpoint import CheckpointError, read_state_dict
from diffir.training_state import read_training_state
from diffir.convert import main as convert_main
from diffir.options import load_yaml
from diffir.utils.safetensors_io import (
    load_state_dict,
    recorded_network_options,
    save_state_dict,
)
from diffir.zoo import ZOO, resolve, sha256_file

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], scale=2)
DEMO_PTH_SHA256 = "1ea21012018218e096bf087c64865e5e356a0e634e8270bee1731fe8cf26e7cd"  # the .pth it replaced


def tiny_net(cls=DiffIRS2, seed=0, **options):
    torch.manual_seed(seed)
    return cls(**{**TINY, **options}).eval()


def test_read_state_dict_reads_safetensors_like_pth(tmp_path):
    state_dict = tiny_net().state_dict()
    torch.save({"params": state_dict}, tmp_path / "a.pth")
    assert convert_main([str(tmp_path / "a.pth"), str(tmp_path / "a.safetensors")]) == 0
    shutil.copy(tmp_path / "a.safetensors", tmp_path / "renamed.pth")  # recognised by content, not by name
    for name in ("a.safetensors", "renamed.pth"):
        loaded, _ = read_state_dict(tmp_path / name)
        assert loaded.keys() == state_dict.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())
    # the aliased modules (denoise.* is diffusion.model.*) are stored as separate tensors: a strict load works
    DiffIRS2(**TINY).load_state_dict(read_state_dict(tmp_path / "a.safetensors")[0], strict=True)


def test_convert_records_the_options_and_the_source_hash(tmp_path, capsys):
    source, target = tmp_path / "net.pth", tmp_path / "net.safetensors"
    net = tiny_net(DiffIRS1)
    torch.save({"params": {k: v + 1 for k, v in net.state_dict().items()}, "params_ema": net.state_dict()}, source)
    assert convert_main([str(source), str(target)]) == 0
    tensors, metadata = load_state_dict(target)
    assert json.loads(metadata["diffir.network_g"]) == infer_network_options(net.state_dict())
    assert metadata["diffir.network_g"] and recorded_network_options(target)["type"] == "DiffIRS1"
    assert metadata["diffir.source_sha256"] == sha256_file(source) and metadata["diffir.source"] == "net.pth"
    assert all(torch.equal(tensors[k], v) for k, v in net.state_dict().items())  # params_ema chosen
    capsys.readouterr()
    assert convert_main(["--hash", str(target)]) == 0
    assert capsys.readouterr().out.split() == [sha256_file(target), str(target)]


def test_convert_refuses_to_overwrite_without_the_flag(tmp_path, capsys):
    source, target = tmp_path / "net.pth", tmp_path / "net.safetensors"
    torch.save({"params": tiny_net().state_dict()}, source)
    target.write_bytes(b"precious")
    assert convert_main([str(source), str(target)]) == 1
    assert "exists; give --overwrite" in capsys.readouterr().err and target.read_bytes() == b"precious"
    assert convert_main([str(source), str(target), "--overwrite"]) == 0
    assert recorded_network_options(target)["type"] == "DiffIRS2"
    assert convert_main([str(source), str(tmp_path / "net.bin")]) == 1
    assert "must end in .safetensors" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_convert_reads_the_official_inpainting_lightning_layout(tmp_path):
    generator = tiny_net(inp_channels=4, scale=None, num_refinement_blocks=0).state_dict()
    checkpoint = {"state_dict": {**{f"generator.{k}": v for k, v in generator.items()},
                                 "discriminator.model0.0.weight": torch.zeros(8, 3, 4, 4)},
                  "epoch": 3, "hyper_parameters": {"lr": 1e-3}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    assert convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "inpaint.safetensors")]) == 0
    tensors, metadata = load_state_dict(tmp_path / "inpaint.safetensors")
    assert tensors.keys() == generator.keys()
    assert json.loads(metadata["diffir.network_g"])["inp_channels"] == 4


def test_unreadable_files_are_named(tmp_path):
    state_dict = tiny_net().state_dict()
    save_state_dict(state_dict, tmp_path / "a.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tmp_path / "a.safetensors").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        read_state_dict(truncated)
    save_state_dict(state_dict, tmp_path / "bad.safetensors", {"diffir.network_g": "{not json"})
    with pytest.raises(ValueError, match=r"bad.safetensors: metadata 'diffir.network_g' is not valid JSON"):
        Restorer.from_pretrained(tmp_path / "bad.safetensors", device="cpu")


def test_restorer_uses_the_recorded_options(tmp_path, monkeypatch):
    net = tiny_net()
    save_state_dict(net.state_dict(), tmp_path / "net.safetensors", network_options={"type": "DiffIRS2", **TINY})

    def no_inference(state_dict):
        raise AssertionError("the options were inferred although the file records them")

    monkeypatch.setattr(diffir.archs.detect, "infer_network_options", no_inference)
    restorer = Restorer.from_pretrained(tmp_path / "net.safetensors", device="cpu")
    image = np.random.default_rng(0).random((16, 24, 3), dtype=np.float32)
    expected = Restorer(net, device="cpu").restore(image, seed=5)
    assert np.array_equal(restorer.restore(image, seed=5), expected)


def test_bundled_demo_model_is_safetensors_with_a_recorded_hash():
    entry = ZOO["demo-sr-x4"]
    assert entry.file.endswith(".safetensors") and entry.sha256
    path = resolve("demo-sr-x4")  # checks the SHA-256
    assert sha256_file(path) == entry.sha256
    metadata = load_state_dict(path)[1]
    assert metadata["diffir.source_sha256"] == DEMO_PTH_SHA256
    assert recorded_network_options(path) == infer_network_options(read_state_dict(path)[0])


def test_training_saves_safetensors_when_asked(tmp_path, monkeypatch):
    from diffir.train_pipeline import train_pipeline

    (tmp_path / "demo_data" / "train").mkdir(parents=True)
    (tmp_path / "demo_data" / "val").mkdir(parents=True)
    shutil.copy(REPO / "demo_data" / "train" / "fig_bowl.png", tmp_path / "demo_data" / "train")
    shutil.copy(REPO / "demo_data" / "val" / "dandelion_field.png", tmp_path / "demo_data" / "val")
    monkeypatch.chdir(tmp_path)
    opt = load_yaml(str(REPO / "options" / "demo" / "train_demo_DiffIRS1_x4.yml"))
    opt["network_g"].update(n_encoder_res=1, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                            heads=[1, 1, 2, 2])
    opt["datasets"]["train"].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=4)
    opt["train"]["total_iter"] = 2
    opt["val"]["val_freq"] = 1000
    opt["logger"].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False, save_format="safetensors")
    (tmp_path / "s1.yml").write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))

    models = Path(train_pipeline(["-opt", str(tmp_path / "s1.yml")])) / "models"
    assert sorted(p.name for p in models.iterdir()) == ["net_g_2.safetensors", "net_g_latest.safetensors"]
    saved, metadata = load_state_dict(models / "net_g_2.safetensors")
    state = read_training_state(models.parent / "training_states" / "2.state")
    ema = "net_g_ema" in state["networks"]
    assert metadata["diffir.param_key"] == ("params_ema" if ema else "params")
    trained = state["networks"]["net_g_ema" if ema else "net_g"]
    assert saved.keys() == trained.keys() and all(torch.equal(saved[k], v) for k, v in trained.items())
    options = recorded_network_options(models / "net_g_latest.safetensors")
    assert options["type"] == "DiffIRS1" and options["dim"] == 8
    diffir.archs.detect.network_for_state_dict(read_state_dict(models / "net_g_latest.safetensors")[0], options)
