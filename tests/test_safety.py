"""Nothing executed, nothing lost: files a user is given run no code, names stay inside experiments/,
a live experiment is not taken over, damaged states and edited options do not derail a resume,
and an image that cannot be decoded stops training before it starts."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffir.options import load_yaml, parse_options

REPO = Path(__file__).resolve().parents[1]
TINY_NET = {"n_encoder_res": 1, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 2, 2]}
NAME = "safety"


class CreatesFile:
    """Unpickling this calls ``open(path, 'w')``: a stand-in for any code a crafted file could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    for name in ("fig_bowl", "forest_stream"):
        shutil.copy(REPO / "demo_data" / "train" / f"{name}.png", tmp_path / "train")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture()
def basicsr_log(caplog):
    logger = logging.getLogger("basicsr")  # does not propagate: listen to it directly
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def write_options(workdir, file="opt.yml", **train_overrides):
    opt = load_yaml(str(REPO / "options" / "demo" / "train_demo_DiffIRS1_x4.yml"))
    opt["name"] = NAME
    opt["network_g"].update(TINY_NET)
    opt["datasets"]["train"].update(dataroot_gt="train", gt_size=32, batch_size_per_gpu=2, dataset_enlarge_ratio=4)
    del opt["datasets"]["val"], opt["val"]
    opt["train"].update({"total_iter": 4, **train_overrides})
    opt["train"]["optim_g"]["lr"] = 2e-4
    opt["train"]["scheduler"].update(milestones=[1000], gamma=0.5)
    opt["logger"].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    path = workdir / file
    path.write_text(yaml.safe_dump(json.loads(json.dumps(opt)), sort_keys=False))  # plain dicts, whoever loaded them
    return path


def run_train(args):
    from diffir.train_pipeline import train_pipeline
    return Path(train_pipeline(args))


# ---------------------------------------------------------------------------- no code runs
def test_a_crafted_training_state_runs_nothing(workdir):
    opt_path = write_options(workdir)
    states = workdir / "experiments" / NAME / "training_states"
    states.mkdir(parents=True)
    marker = workdir / "pwned"
    torch.save({"iter": 8, "epoch": 0, "rng": CreatesFile(marker)}, states / "8.state")
    for args in (["--auto_resume"], ["--force_yml", f"path:resume_state={states / '8.state'}"]):
        with pytest.raises(Exception) as err:  # noqa: PT011 (the message is checked below)
            run_train(["-opt", str(opt_path), *args])
        assert not marker.exists()
        assert str(states / "8.state") in str(err.value) and "refused" in str(err.value)


def test_an_option_file_runs_nothing(workdir):
    marker = workdir / "pwned"
    payload = workdir / "payload.yml"
    payload.write_text(write_options(workdir).read_text().replace(
        f"name: {NAME}", f"name: !!python/object/apply:builtins.open ['{marker}', 'w']"))
    with pytest.raises(ValueError, match=r"payload.yml is not valid plain YAML"):
        parse_options(True, ["-opt", str(payload)])
    assert not marker.exists()

    # --force_yml values are read the same way (basicsr evaluates a list value as Python)
    for value in (f"[open('{marker}','w')]", f"[__import__('builtins').open('{marker}', 'w')]"):
        with pytest.raises(ValueError, match=r"manual_seed.*(not plain YAML|expected an integer)"):
            parse_options(True, ["-opt", str(workdir / "opt.yml"), "--force_yml", f"manual_seed={value}"])
        assert not marker.exists()


def test_every_torch_load_says_weights_only_true():
    calls = []
    for path in REPO.rglob("*.py"):
        text = path.read_text() if path.name != "test_safety.py" else ""
        start = text.find("torch.load(")
        while start != -1:
            end = text.find("\n", start)
            calls.append((path.name, text[start:end]))
            start = text.find("torch.load(", end)
    assert calls  # the scan finds the project's loads
    assert [c for c in calls if "weights_only=True" not in c[1]] == []


# ---------------------------------------------------------------------------- names and locks
@pytest.mark.parametrize("name", ["../../escaped", "<tmp>/escaped", "a/b", "a\\b", "..", "."])
def test_a_name_must_be_one_folder_name(workdir, name):
    name = name.replace("<tmp>", str(workdir))  # an absolute name, inside the test's folder all the same
    opt_path = write_options(workdir)
    root = workdir / "runs" / "here"
    root.mkdir(parents=True)
    (workdir / "escaped").mkdir()  # an existing folder the name could reach
    with pytest.raises(ValueError, match=r"must be a single folder name"):
        run_train(["-opt", str(opt_path), "--root", str(root), "--force_yml", f"name={name}"])
    assert list(root.iterdir()) == [] and list((workdir / "escaped").iterdir()) == []
    assert not list(workdir.glob("escaped_archived_*"))


def test_a_results_name_must_be_one_folder_name(workdir):
    opt = load_yaml(str(REPO / "options" / "demo" / "test_demo_DiffIRS2_x4.yml"))
    opt["name"] = "../outside"
    (workdir / "test.yml").write_text(yaml.safe_dump(json.loads(json.dumps(opt))))
    with pytest.raises(ValueError, match=r"option 'name' is '../outside'"):
        parse_options(False, ["-opt", str(workdir / "test.yml")])


def test_a_running_experiment_is_not_taken_over(workdir, basicsr_log):
    opt_path = write_options(workdir)
    live = workdir / "experiments" / NAME
    live.mkdir(parents=True)
    (live / "progress.txt").write_text("the running job's files")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from diffir.experiment import ExperimentLock; "
                               f"ExperimentLock('experiments', {NAME!r}); print('locked', flush=True); time.sleep(60)"],
        cwd=workdir, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=rf"experiment '{NAME}' is being trained by process {holder.pid}"):
            run_train(["-opt", str(opt_path)])
        assert (live / "progress.txt").read_text() == "the running job's files"
        assert not list(live.parent.glob("*archived*"))
    finally:
        holder.kill()
        holder.wait()
    # the dead holder's lock is stale: the name is free again
    from diffir.experiment import ExperimentLock
    lock = ExperimentLock(str(workdir / "experiments"), NAME)
    assert Path(lock.path).read_text().strip() == str(os.getpid())
    lock.release()


# ---------------------------------------------------------------------------- resuming
def test_resume_skips_damaged_states_and_follows_edited_options(workdir, basicsr_log):
    opt_path = write_options(workdir)
    exp = run_train(["-opt", str(opt_path)])  # states at 2 and 4
    first_options = sorted(exp.glob("options_*.yml"))
    assert len(first_options) == 1 and load_yaml(str(first_options[0]))["train"]["optim_g"]["lr"] == 2e-4

    # what a resume cannot follow is refused, listed, and nothing is written
    write_options(workdir, "bigger_batch.yml", total_iter=6)
    text = (workdir / "bigger_batch.yml").read_text().replace("batch_size_per_gpu: 2", "batch_size_per_gpu: 4")
    (workdir / "bigger_batch.yml").write_text(text)
    with pytest.raises(RuntimeError, match=r"(?s)cannot resume.*datasets.train.batch_size_per_gpu: 2 -> 4"):
        run_train(["-opt", str(workdir / "bigger_batch.yml"), "--auto_resume"])
    assert sorted(exp.glob("options_*.yml")) == first_options

    # a torn newest state and a killed save's temporary file; the new learning rate and total_iter apply
    with open(exp / "training_states" / "4.state", "r+b") as f:
        f.truncate(100)
    partial = exp / "models" / ".net_g_6.pth.4242.0123abcd.tmp"
    partial.write_bytes(b"half a file")
    (exp / "visualization" / "Set5").mkdir(parents=True)
    partial_image = exp / "visualization" / "Set5" / ".baby_6.png.4242.89abcdef.png"  # write_image's temporary name
    partial_image.write_bytes(b"half an image")
    users_file = exp / "models" / "notes.tmp"  # not a name diffir.utils.atomic makes: kept
    users_file.write_text("mine")
    new_lr = write_options(workdir, "new_lr.yml", total_iter=6)
    new_lr.write_text(new_lr.read_text().replace("lr: 0.0002", "lr: 5.0e-05"))
    run_train(["-opt", str(new_lr), "--auto_resume"])
    log = basicsr_log.text
    assert f"skipped a damaged training state: training state {exp / 'training_states' / '4.state'}" in log
    assert f"resumed from {exp / 'training_states' / '2.state'}" in log
    assert "train.optim_g.lr: 0.0002 -> 5e-05" in log and "train.total_iter: 4 -> 6" in log
    assert not partial.exists() and not partial_image.exists() and users_file.read_text() == "mine"
    assert "removed 2 partial file(s) of an interrupted save" in log
    from diffir.training_state import read_training_state
    final = read_training_state(exp / "training_states" / "6.state")
    assert final["iter"] == 6 and final["optimizers"][0]["param_groups"][0]["lr"] == pytest.approx(5e-5)
    versions = sorted(exp.glob("options_*.yml"))
    assert len(versions) == 2 and versions[0] == first_options[0]
    assert load_yaml(str(versions[0]))["train"]["optim_g"]["lr"] == 2e-4
    assert load_yaml(str(versions[1]))["train"]["optim_g"]["lr"] == 5e-5


def test_a_resume_applies_the_learning_rate_even_when_the_newest_options_already_had_it(workdir, monkeypatch):
    """A (lr 1e-4) saves a state; B resumes it with lr 2e-4 and dies before its first checkpoint; C resumes
    with B's options: nothing differs from the newest options_*.yml, yet the state still holds 1e-4."""
    from diffir import train_pipeline
    from diffir.training_state import read_training_state

    def lr_file(file, lr, total_iter):
        path = write_options(workdir, file, total_iter=total_iter)
        path.write_text(path.read_text().replace("lr: 0.0002", f"lr: {lr}"))
        return path

    exp = run_train(["-opt", str(lr_file("a.yml", "1.0e-04", 4))])  # run A: states at 2 and 4
    assert read_training_state(exp / "training_states" / "4.state")["optimizers"][0]["param_groups"][0]["lr"] == \
        pytest.approx(1e-4)

    def killed(*args, **kwargs):
        raise RuntimeError("killed before its first checkpoint")

    b_options = lr_file("b.yml", "2.0e-04", 6)
    with monkeypatch.context() as patch:  # run B: its options are kept, no training state is
        patch.setattr(train_pipeline, "create_dataloaders", killed)
        with pytest.raises(RuntimeError, match="killed"):
            run_train(["-opt", str(b_options), "--auto_resume"])
    assert len(list(exp.glob("options_*.yml"))) == 2
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state", "4.state"]

    run_train(["-opt", str(b_options), "--auto_resume"])  # run C: the same options as B
    final = read_training_state(exp / "training_states" / "6.state")
    assert final["iter"] == 6 and final["optimizers"][0]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert final["schedulers"][0]["base_lrs"] == [pytest.approx(2e-4)]


# ---------------------------------------------------------------------------- damaged images
def test_an_image_that_cannot_be_decoded_stops_training_before_it_starts(workdir):
    opt_path = write_options(workdir)
    damaged = workdir / "train" / "forest_stream.png"
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])  # the header is intact, the pixel data cut off
    with pytest.raises(ValueError, match=r"1 image file\(s\) have a readable header but cannot be decoded.*"
                                         r"forest_stream.png"):
        run_train(["-opt", str(opt_path)])
    assert not (workdir / "experiments" / NAME).exists()

    # decoded images are cached by path, size and mtime: a changed file is decoded again
    from diffir.data.checks import DecodeCache, undecodable
    damaged.write_bytes(data)
    paths = sorted(str(p) for p in (workdir / "train").iterdir())
    assert undecodable(paths) == []
    assert DecodeCache().unchecked(paths) == []
    damaged.write_bytes(data[: len(data) // 2])
    assert DecodeCache().unchecked(paths) == [str(damaged)] and undecodable(paths) == [str(damaged)]


def test_only_rank_zero_decodes_the_datasets_and_every_rank_gets_its_error(monkeypatch):
    from diffir import train_pipeline
    checked, sent = [], []

    def check(dataset_opt, decode=False):
        checked.append((dataset_opt["name"], decode))
        if dataset_opt["name"] == "bad":
            raise ValueError("bad.png cannot be decoded")

    def broadcast(objects, src):  # what torch.distributed does: rank 0's list reaches every rank
        assert src == 0
        if sent:
            objects[:] = sent
        else:
            sent[:] = objects

    monkeypatch.setattr(train_pipeline, "check_dataset_options", check)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    datasets = {"train": {"name": "good"}, "val": {"name": "bad"}}
    with pytest.raises(ValueError, match=r"^bad.png cannot be decoded$"):  # rank 0 raises its own error
        train_pipeline.check_datasets({"rank": 0, "dist": True, "datasets": datasets})
    assert checked == [("good", True), ("bad", True)] and sent == ["ValueError: bad.png cannot be decoded"]
    for rank in (1, 2):  # the others decode nothing and raise what rank 0 found
        with pytest.raises(ValueError, match=r"rank 0 found a problem in the datasets: ValueError: bad.png"):
            train_pipeline.check_datasets({"rank": rank, "dist": True, "datasets": datasets})
    assert len(checked) == 2
    sent[:] = [None]  # all well on rank 0: nobody raises
    train_pipeline.check_datasets({"rank": 1, "dist": True, "datasets": datasets})


def test_resume_changes_split_what_a_resume_can_follow():
    from diffir.experiment import changes_learning_rate, resume_changes
    old = load_yaml(str(REPO / "options" / "demo" / "train_demo_DiffIRS1_x4.yml"))
    new = json.loads(json.dumps(old))
    new["train"]["optim_g"]["lr"] = 1e-5
    new["train"]["scheduler"]["milestones"] = [10, 20]
    new["val"]["val_freq"] = 7
    new["datasets"]["val_2"] = {"name": "More", "type": "HRBicubicDataset", "dataroot_gt": "x"}
    new["network_g"]["dim"] = old["network_g"]["dim"] + 8
    new["datasets"]["train"]["gt_size"] = 128
    del new["train"]["pixel_opt"]
    applicable, refused = resume_changes(old, new)
    assert sorted(line.split(":")[0] for line in applicable) == [
        "datasets.val_2.dataroot_gt", "datasets.val_2.name", "datasets.val_2.type", "train.optim_g.lr",
        "train.scheduler.milestones", "val.val_freq"]
    assert sorted(line.split(":")[0] for line in refused) == [
        "datasets.train.gt_size", "network_g.dim", "train.pixel_opt.loss_weight", "train.pixel_opt.reduction",
        "train.pixel_opt.type"]
    assert f"network_g.dim: {old['network_g']['dim']!r} -> {new['network_g']['dim']!r}" in refused
    assert changes_learning_rate(applicable) and not changes_learning_rate([a for a in applicable if "val" in a])
