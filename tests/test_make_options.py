"""docs/train-your-own.md end to end: option files for a folder of photos, stage one, stage two, a restored image."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffir.image_io import read_image
from diffir.make_options import MACHINES, main
from diffir.train_pipeline import train_pipeline

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "demo_data" / "train"


def run(*args, cwd):
    """A command of the guide, run as a user runs it (a fresh process, this checkout's diffir)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def options(folder, name, stage):
    return yaml.safe_load((folder / f"train_{name}_S{stage}.yml").read_text())


def test_options_follow_the_folder_and_the_machine(tmp_path):
    photos = sorted(p.name for p in PHOTOS.iterdir())
    assert main([str(PHOTOS), "--name", "six", "-o", str(tmp_path), "--device", "cpu"]) == 0
    train = (tmp_path / "six_train.txt").read_text().split()
    val = (tmp_path / "six_val.txt").read_text().split()
    assert len(val) == 1 and sorted(train + val) == photos  # a disjoint split covering every photo
    s1, s2 = options(tmp_path, "six", 1), options(tmp_path, "six", 2)
    cpu = MACHINES["cpu"]
    for opt in (s1, s2):
        assert opt["num_gpu"] == 0 and opt["scale"] == 4
        assert opt["datasets"]["train"]["dataroot_gt"] == str(PHOTOS)
        assert opt["datasets"]["train"]["meta_info"] == str(tmp_path / "six_train.txt")
        assert opt["datasets"]["val"]["meta_info"] == str(tmp_path / "six_val.txt")
        assert opt["datasets"]["train"]["gt_size"] == cpu["gt_size"]
        # 5 training photos: the CPU minimum of iterations
        assert opt["train"]["total_iter"] == max(cpu["min"], 5 * cpu["per_photo"])
        assert opt["network_g"]["dim"] == 16  # the demo network
    assert s1["network_g"]["type"] == "DiffIRS1" and s2["network_g"]["type"] == "DiffIRS2"
    assert s2["path"]["pretrain_network_g"] == "experiments/six_S1/models/net_g_latest.pth"

    # a GPU gets the paper's network and patches; x2 and a bigger validation share are honoured
    assert main([str(PHOTOS), "--name", "gpu", "-o", str(tmp_path), "--device", "gpu", "-s", "2",
                 "--val-count", "2"]) == 0
    gpu = options(tmp_path, "gpu", 2)
    assert gpu["num_gpu"] == "auto" and gpu["scale"] == 2 and gpu["network_g"]["scale"] == 2
    assert gpu["network_g"]["dim"] == 64 and gpu["network_S1"]["num_blocks"] == [13, 1, 1, 1]
    assert gpu["datasets"]["train"]["gt_size"] == 256  # the smallest photo's short side is 256
    assert gpu["train"]["total_iter"] == MACHINES["gpu"]["min"]
    assert len((tmp_path / "gpu_val.txt").read_text().split()) == 2
    # a patch larger than the photos shrinks to the smallest training photo's short side (256)
    assert main([str(PHOTOS), "--name", "big", "-o", str(tmp_path), "--device", "gpu", "--gt-size", "512"]) == 0
    assert options(tmp_path, "big", 1)["datasets"]["train"]["gt_size"] == 256


def test_iterations_grow_with_the_folder(tmp_path):
    (tmp_path / "many").mkdir()
    for i in range(30):
        (tmp_path / "many" / f"p{i:02}.png").symlink_to(PHOTOS / "fig_bowl.png")
    assert main([str(tmp_path / "many"), "-o", str(tmp_path), "--device", "cpu"]) == 0
    train = (tmp_path / "many_train.txt").read_text().split()
    assert len(train) == 27 and len((tmp_path / "many_val.txt").read_text().split()) == 3  # 10% held out
    cpu = MACHINES["cpu"]
    assert options(tmp_path, "many", 2)["train"]["total_iter"] == 27 * cpu["per_photo"] > cpu["min"]


def test_refuses_to_overwrite_and_names_bad_input(tmp_path, capsys):
    assert main([str(PHOTOS), "--name", "a", "-o", str(tmp_path), "--device", "cpu"]) == 0
    before = (tmp_path / "train_a_S1.yml").read_text()
    assert main([str(PHOTOS), "--name", "a", "-o", str(tmp_path), "--device", "cpu", "--iters", "5"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (tmp_path / "train_a_S1.yml").read_text() == before
    assert main([str(PHOTOS), "--name", "a", "-o", str(tmp_path), "--device", "cpu", "--iters", "5", "--force"]) == 0
    assert options(tmp_path, "a", 1)["train"]["total_iter"] == 5

    for bad in ("../x", "..", "a\\b", " "):  # the check of diffir.experiment.check_name (a blank name too)
        assert main([str(PHOTOS), "--name", bad, "-o", str(tmp_path), "--device", "cpu"]) == 2
        assert f"--name must be a single folder name, got {bad!r}" in capsys.readouterr().err
    assert not (tmp_path / "train_ _S1.yml").exists()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes((PHOTOS / "fig_bowl.png").read_bytes())
    assert main([str(tmp_path / "one"), "-o", str(tmp_path)]) == 2
    assert "need at least 2 photos" in capsys.readouterr().err
    (tmp_path / "one" / "b.png").write_bytes(b"not a png")
    assert main([str(tmp_path / "one"), "-o", str(tmp_path)]) == 2
    assert "b.png" in capsys.readouterr().err


def test_guide_from_photos_to_a_restored_image(tmp_path, monkeypatch):
    # the guide's commands, with a run of a few iterations on small patches; training runs in this
    # process (train.py is a shell around train_pipeline), the last command as a user runs it
    monkeypatch.chdir(tmp_path)
    assert main([str(PHOTOS), "--name", "mine", "--device", "cpu", "--iters", "4", "--gt-size", "32"]) == 0
    out = tmp_path / "options" / "own"
    s1 = Path(train_pipeline(["-opt", str(out / "train_mine_S1.yml")]))
    assert s1 == tmp_path / "experiments" / "mine_S1"
    assert (s1 / "models" / "net_g_latest.pth").is_file() and (s1 / "training_states" / "4.state").is_file()
    assert list((tmp_path / "tb_logger" / "mine_S1").glob("events.out.tfevents.*"))
    s2 = Path(train_pipeline(["-opt", str(out / "train_mine_S2.yml")]))
    val_photo = Path((out / "mine_val.txt").read_text().split()[0]).stem
    # validation images: one per validation photo and validation round (every 4 // 4 = 1 iteration)
    assert sorted(p.name for p in (s2 / "visualization" / val_photo).iterdir()) == [
        f"{val_photo}_{it}.png" for it in range(1, 5)]

    run(REPO / "inference.py", "-i", PHOTOS.parent / "val" / "dandelion_field.png", "-o", "restored",
        "-m", s2 / "models" / "net_g_latest.pth", cwd=tmp_path)
    restored = read_image(tmp_path / "restored" / "dandelion_field.png")
    assert restored.shape == (4 * 216, 4 * 384, 3)


@pytest.mark.parametrize("stage", [1, 2])
def test_generated_options_differ_from_the_demo_only_where_stated(tmp_path, stage):
    """The files are the demo's: same model, losses and optimiser, so the demo's tested recipe carries over."""
    assert main([str(PHOTOS), "--name", "d", "-o", str(tmp_path), "--device", "cpu"]) == 0
    demo = yaml.safe_load((REPO / "options" / "demo" / f"train_demo_DiffIRS{stage}_x4.yml").read_text())
    ours = options(tmp_path, "d", stage)
    assert ours["model_type"] == demo["model_type"]
    assert ours["network_g"] == demo["network_g"]
    for key in ("optim_g", "pixel_opt", "ema_decay") + (("kd_opt",) if stage == 2 else ()):
        assert ours["train"][key] == demo["train"][key]
