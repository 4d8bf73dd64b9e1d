"""Two-stage training end to end on tiny networks and the bundled photos (CPU)."""
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
import yaml
from basicsr.models import build_model
from basicsr.utils.options import ordered_yaml

from diffir.data.degradation import REQUIRED_KEYS
from diffir.models.base import NonFiniteLossError, complete_network_scale
from diffir.options import load_yaml
from diffir.training_state import read_training_state

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "options" / "demo"


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A run folder with two photos for training and one for validation."""
    for split, names in (("train", ["fig_bowl", "forest_stream"]), ("val", ["dandelion_field"])):
        (tmp_path / "demo_data" / split).mkdir(parents=True)
        for name in names:
            shutil.copy(REPO / "demo_data" / split / f"{name}.png", tmp_path / "demo_data" / split)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def basicsr_log(caplog):
    """basicsr's log records. Its logger does not propagate, and in one process only the first
    pipeline's log file is written, so the tests read the records instead of the files."""
    logger = logging.getLogger("basicsr")
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture()
def stage_options(workdir, tiny_diffir):
    """``stage_options(stage, top_level=None, **train_overrides)``: the demo option file of a stage,
    shrunk to tiny networks and a few iterations, written into the run folder; returns (path, options)."""
    def write(stage, top_level=None, **train_overrides):
        return write_options(workdir, tiny_diffir, stage, top_level, **train_overrides)
    return write


def write_options(workdir, tiny_net, stage, top_level=None, **train_overrides):
    opt = load_yaml(str(DEMO / f"train_demo_DiffIRS{stage}_x4.yml"))
    opt.update(top_level or {})
    for key in ("network_g", "network_S1"):
        if key in opt:
            opt[key].update(tiny_net)
    opt["datasets"]["train"].update(gt_size=32, batch_size_per_gpu=4, num_worker_per_gpu=0, dataset_enlarge_ratio=10)
    opt["train"].update(total_iter=6, **train_overrides)
    opt["val"]["val_freq"] = 1000
    opt["logger"].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    path = workdir / f"s{stage}.yml"
    path.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    return path, opt


def run_train(args):
    from diffir.train_pipeline import train_pipeline
    return Path(train_pipeline(args))


def model_from(opt_path):
    from diffir.options import parse_options
    opt, _ = parse_options(is_train=True, argv=["-opt", str(opt_path)])
    return build_model(opt)


def fixed_batch(scale=4, size=16):
    """Four photo crops and their box-downscaled LR images."""
    photo = torch.from_numpy(cv2.imread(str(REPO / "demo_data" / "train" / "fig_bowl.png"))).permute(2, 0, 1) / 255.0
    p = size * scale
    gt = torch.stack([photo[:, y:y + p, x:x + p] for y, x in ((0, 0), (100, 60), (180, 200), (40, 300))]).float()
    return {"lq": torch.nn.functional.avg_pool2d(gt, scale), "gt": gt}


def test_stage_one_loss_falls(stage_options):
    opt_path, _ = stage_options(1)
    model = model_from(opt_path)
    batch = fixed_batch()
    losses = []
    for it in range(1, 41):
        model.feed_data(batch)
        model.optimize_parameters(it)
        losses.append(model.get_current_log()["l_pix"])
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_pipeline_stage_one_then_two_then_test(workdir, tiny_diffir, stage_options, basicsr_log):
    s1_opt, _ = stage_options(1)
    exp1 = run_train(["-opt", str(s1_opt)])
    s1_ckpt = exp1 / "models" / "net_g_latest.pth"
    saved = torch.load(s1_ckpt, weights_only=True)
    assert set(saved) == {"params", "params_ema"}
    assert all(k.startswith(("G.", "E.")) for k in saved["params"])

    s2_opt, opt = stage_options(2, encoder_iter=4)
    opt["path"].update(pretrain_network_g=str(s1_ckpt), pretrain_network_S1=str(s1_ckpt))
    s2_opt.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    model = model_from(s2_opt)
    # the DIRformer starts from stage one; stage one is frozen
    assert torch.equal(model.net_g.G.patch_embed.proj.weight, saved["params_ema"]["G.patch_embed.proj.weight"])
    assert not any(p.requires_grad for p in model.net_g_S1.parameters())
    # one line says what came from stage one, instead of basicsr's list of every differing key
    n_dirformer = sum(k.startswith("G.") for k in saved["params"])
    assert (f"net_g: loaded {n_dirformer} DIRformer (G.*) tensors from {s1_ckpt} ('params_ema'); "
            f"CPEN_S2 (condition.*), denoiser (denoise.*), noise schedule (diffusion.*) start fresh; "
            f"not used from the file: CPEN_S1 (E.*)" in basicsr_log.text)
    assert "Current net" not in basicsr_log.text

    batch = fixed_batch()
    g_before = model.net_g.G.patch_embed.proj.weight.clone()
    ipr_losses = []
    for it in range(1, 4):  # encoder phase: only CPEN_S2 + denoiser change
        model.feed_data(batch)
        model.optimize_parameters(it)
        ipr_losses.append(model.get_current_log()["l_ipr"])
    assert torch.equal(model.net_g.G.patch_embed.proj.weight, g_before)
    for it in range(4, 40):  # joint phase
        model.feed_data(batch)
        model.optimize_parameters(it)
        ipr_losses.append(model.get_current_log()["l_ipr"])
        assert "l_pix" in model.get_current_log()
    assert not torch.equal(model.net_g.G.patch_embed.proj.weight, g_before)
    assert sum(ipr_losses[-5:]) / 5 < sum(ipr_losses[:3]) / 3, ipr_losses

    exp2 = run_train(["-opt", str(s2_opt)])
    s2_ckpt = exp2 / "models" / "net_g_latest.pth"
    s2_params = torch.load(s2_ckpt, weights_only=True)["params"]
    assert all(k.startswith(("G.", "condition.", "denoise.", "diffusion.")) for k in s2_params)

    test_opt = load_yaml(str(DEMO / "test_demo_DiffIRS2_x4.yml"))
    test_opt["network_g"].update(tiny_diffir)
    test_opt["path"]["pretrain_network_g"] = str(s2_ckpt)
    test_opt["datasets"]["test_2"] = {"name": "LQOnly", "type": "SingleImageDataset", "dataroot_lq": "lq_only",
                                      "io_backend": {"type": "disk"}}
    (workdir / "lq_only").mkdir()
    shutil.copy(workdir / "demo_data" / "val" / "dandelion_field.png", workdir / "lq_only" / "small.png")
    (workdir / "test.yml").write_text(yaml.dump(test_opt, Dumper=ordered_yaml()[1]))
    from diffir.test_pipeline import test_pipeline
    results = Path(test_pipeline(["-opt", str(workdir / "test.yml")]))
    assert (results / "visualization" / "DemoHeldOut" / "dandelion_field_demo_DiffIRS2_x4.png").is_file()
    assert (results / "visualization" / "LQOnly" / "small_demo_DiffIRS2_x4.png").is_file()
    log = basicsr_log.text
    assert "Validation DemoHeldOut" in log and "# psnr:" in log and "# ssim:" in log
    assert "LQOnly: no ground truth, saving outputs only" in log


def test_resume_continues_at_the_same_iteration(stage_options, basicsr_log):
    opt_path, _ = stage_options(1)
    exp = run_train(["-opt", str(opt_path), "--force_yml", "train:total_iter=4"])
    state = read_training_state(exp / "training_states" / "4.state")  # torch.load(weights_only=True) inside
    assert state["iter"] == 4 and set(state["networks"]) == {"net_g", "net_g_ema"}
    assert not list(exp.parent.glob("*archived*"))

    # a partial write left by a kill never counts: only complete *.state files are candidates
    (exp / "training_states" / ".6.state.123.0123abcd.tmp").write_bytes(b"garbage")
    model = model_from(opt_path)
    model.resume_training(state)
    assert torch.equal(model.net_g_ema.G.patch_embed.proj.weight,
                       state["networks"]["net_g_ema"]["G.patch_embed.proj.weight"])
    assert model.optimizer_g.state_dict()["state"][0]["step"] == 4

    run_train(["-opt", str(opt_path), "--auto_resume"])
    log = basicsr_log.text
    assert f"resumed from {exp / 'training_states' / '4.state'}: epoch" in log and "iter 4" in log
    after_resume = log[log.index("resumed from"):]
    assert re.search(r"iter:\s+5,", after_resume) and not re.search(r"iter:\s+[1-4],", after_resume)
    assert (exp / "training_states" / "6.state").is_file()
    assert not list(exp.parent.glob("*archived*"))


def test_resume_mid_epoch_draws_the_uninterrupted_runs_samples(workdir, stage_options, monkeypatch):
    from diffir.data.hr_bicubic_dataset import HRBicubicDataset
    (workdir / "ten").mkdir()
    for i in range(5):  # 10 images in batches of 2: 5 iterations per epoch
        for name in ("fig_bowl", "forest_stream"):
            shutil.copy(workdir / "demo_data" / "train" / f"{name}.png", workdir / "ten" / f"{name}{i}.png")
    opt_path, opt = stage_options(1)
    opt["datasets"]["train"].update(dataroot_gt="ten", dataset_enlarge_ratio=1, batch_size_per_gpu=2)
    del opt["datasets"]["val"], opt["val"]
    opt_path.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    loaded, get_item = [], HRBicubicDataset.__getitem__  # dataset indices in the order they are loaded

    def recording_get_item(self, index):
        loaded.append(index)
        return get_item(self, index)

    monkeypatch.setattr(HRBicubicDataset, "__getitem__", recording_get_item)

    run_train(["-opt", str(opt_path), "--force_yml", "name=uninterrupted", "train:total_iter=7"])
    uninterrupted = list(loaded)
    assert sorted(uninterrupted[:10]) == list(range(10))  # epoch 0 loads each image once
    loaded.clear()
    run_train(["-opt", str(opt_path), "--force_yml", "train:total_iter=2"])  # stops at 2.state, mid-epoch
    assert loaded == uninterrupted[:4]  # no batch is loaded past the last iteration
    loaded.clear()
    run_train(["-opt", str(opt_path), "--auto_resume", "--force_yml", "train:total_iter=7"])
    # iterations 3-5 finish epoch 0 without loading its first 4 images again, 6-7 start epoch 1
    assert loaded == uninterrupted[4:]


def test_resumable_sampler_skips_the_start_of_each_ranks_share():
    from diffir.train_pipeline import ResumableSampler
    for rank in (0, 1):
        sampler = ResumableSampler(list(range(7)), num_replicas=2, rank=rank, ratio=3)
        sampler.set_epoch(4)
        share = list(sampler)
        sampler.set_epoch(4, start=5)
        assert list(sampler) == share[5:] and len(sampler) == len(share) - 5
        sampler.set_epoch(5)  # later epochs start at their beginning again
        assert len(list(sampler)) == len(sampler) == len(share)


def test_synthetic_degradation_degrades_training_batches_only(stage_options):
    """high_order_degradation: a GT + kernels batch is degraded on the model's device into (lq, gt, gt_usm)
    and trains; pairs with an LQ image (validation) pass through unchanged; off, the model has no degradation."""
    assert model_from(stage_options(1)[0]).degradation is None
    realsr = load_yaml(str(REPO / "options" / "train" / "RealSR" / "train_DiffIRS1_x4.yml"))
    degradation = {key: realsr[key] for key in REQUIRED_KEYS if key != "scale"}
    model = model_from(stage_options(1, top_level={**degradation, "high_order_degradation": True, "gt_size": 64,
                                                   "queue_size": 0, "gt_usm": True})[0])
    torch.manual_seed(0)
    gt = torch.nn.functional.interpolate(fixed_batch()["gt"], scale_factor=1.5, mode="bilinear")  # 96 x 96
    delta = torch.zeros(4, 21, 21)
    delta[:, 10, 10] = 1
    model.feed_data({"gt": gt, "kernel1": delta, "kernel2": delta, "sinc_kernel": delta})
    assert model.lq.shape == (4, 3, 16, 16) and model.gt.shape == model.gt_usm.shape == (4, 3, 64, 64)
    model.optimize_parameters(1)
    assert math.isfinite(model.get_current_log()["l_pix"])
    pairs = fixed_batch()
    model.feed_data(pairs)
    assert torch.equal(model.lq, pairs["lq"]) and not hasattr(model, "gt_usm")


def test_non_finite_loss_is_skipped_then_stops(stage_options, monkeypatch):
    opt_path, _ = stage_options(1, max_nonfinite_steps=3)
    model = model_from(opt_path)
    model.feed_data(fixed_batch())
    before = model.net_g.G.patch_embed.proj.weight.clone()
    original = model.compute_losses

    def nan_losses(batch, it):
        total, loss_dict, output = original(batch, it)
        return total * float("nan"), loss_dict, output

    monkeypatch.setattr(model, "compute_losses", nan_losses)
    model.optimize_parameters(1)
    model.optimize_parameters(2)
    assert torch.equal(model.net_g.G.patch_embed.proj.weight, before)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row up to iter 3"):
        model.optimize_parameters(3)


def test_gradient_accumulation_matches_full_batch(stage_options):
    torch.manual_seed(0)
    opt_path, _ = stage_options(1)
    full = model_from(opt_path)
    opt_path_acc, _ = stage_options(1, grad_accum_steps=2)
    accumulated = model_from(opt_path_acc)
    accumulated.net_g.load_state_dict(full.net_g.state_dict())
    batch = fixed_batch()
    for model in (full, accumulated):
        model.feed_data(batch)
        model.optimize_parameters(1)
    for a, b in zip(full.net_g.parameters(), accumulated.net_g.parameters()):
        # the summed micro-batch gradients are the full batch's, to rounding
        assert (a.grad - b.grad).abs().max() <= 1e-4 * a.grad.abs().max()
        # Adam's first step is about lr * sign(grad): where a gradient is about 1e-5 of the largest
        # (4e-8 here), its rounding moves that element by a percent of lr (1e-3 in the demo options)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_compile_option_trains_like_eager_and_keeps_checkpoint_keys(stage_options):
    """Top-level ``compile``: the network's DIRformer is compiled in place (aot_eager here: the same
    kernels as eager, so the step must match), and the saved keys are the eager network's."""
    torch.manual_seed(0)
    eager = model_from(stage_options(1)[0])
    compiled = model_from(stage_options(1, top_level={"compile": {"backend": "aot_eager"}})[0])
    compiled.net_g.load_state_dict(eager.net_g.state_dict())
    assert compiled.net_g.G._compiled_call_impl is not None and eager.net_g.G._compiled_call_impl is None
    batch = fixed_batch()
    for model in (eager, compiled):
        model.feed_data(batch)
        model.optimize_parameters(1)
    assert list(compiled.net_g.state_dict()) == list(eager.net_g.state_dict())
    for a, b in zip(eager.net_g.parameters(), compiled.net_g.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"compile\.mode: expected one of"):
        model_from(stage_options(1, top_level={"compile": {"mode": "fastest"}})[0])
    with pytest.raises(ValueError, match=r"compile\.options\.freezing .*inference only"):
        model_from(stage_options(1, top_level={"compile": {"options": {"freezing": True}}})[0])


def test_too_few_images_for_one_batch_is_an_error(stage_options):
    opt_path, _ = stage_options(1)
    with pytest.raises(ValueError, match="do not fill one batch"):
        run_train(["-opt", str(opt_path), "--force_yml", "datasets:train:dataset_enlarge_ratio=1",
                   "datasets:train:batch_size_per_gpu=8"])


def test_missing_dataroot_is_reported_before_training(workdir, stage_options):
    opt_path, opt = stage_options(1)
    opt["datasets"]["train"]["dataroot_gt"] = "no/such/folder"
    opt_path.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    with pytest.raises(ValueError, match="no/such/folder"):
        run_train(["-opt", str(opt_path)])
    assert not (workdir / "experiments").exists()


def torchrun_two_processes(script, opt_path, *extra, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with socket.socket() as probe:  # a free port, so parallel runs of the suite cannot collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(REPO / script), "-opt", str(opt_path), "--launcher", "pytorch", *extra]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_two_process_cpu_ddp_train_then_test(workdir, stage_options):
    opt_path, opt = stage_options(1)
    torchrun_two_processes("train.py", opt_path, "--force_yml", "train:total_iter=3", cwd=workdir)
    ckpt = workdir / "experiments" / "demo_DiffIRS1_x4" / "models" / "net_g_latest.pth"
    assert ckpt.is_file()

    test_opt = {key: opt[key] for key in ("model_type", "scale", "num_gpu", "network_g", "val")}
    test_opt.update(name="ddp_test", datasets={"test_1": opt["datasets"]["val"]},
                    path={"pretrain_network_g": str(ckpt)})
    test_path = workdir / "test.yml"
    test_path.write_text(yaml.dump(test_opt, Dumper=ordered_yaml()[1]))
    log = torchrun_two_processes("test.py", test_path, cwd=workdir)
    assert re.search(r"# psnr: \d+\.\d+", log), log[-3000:]


def gan_stage_two_model(stage_options, **train_overrides):
    """A DiffIRGANS2Model on a briefly trained stage one."""
    s1_opt, _ = stage_options(1)
    s1_ckpt = run_train(["-opt", str(s1_opt), "--force_yml", "train:total_iter=2"]) / "models" / "net_g_latest.pth"
    s2_opt, opt = stage_options(2)
    opt["model_type"] = "DiffIRGANS2Model"
    opt["path"].update(pretrain_network_g=str(s1_ckpt), pretrain_network_S1=str(s1_ckpt))
    opt["network_d"] = {"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 8, "skip_connection": True}
    opt["train"].update(encoder_iter=0, optim_d={"type": "Adam", "lr": 1e-4, "betas": [0.9, 0.99]},
                        gan_opt={"type": "GANLoss", "gan_type": "vanilla", "loss_weight": 0.1}, **train_overrides)
    s2_opt.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    return model_from(s2_opt)


def test_gan_stage_two_trains_generator_and_discriminator(stage_options):
    model = gan_stage_two_model(stage_options)
    d_before = [p.clone() for p in model.adversarial.net_d.parameters()]
    for it in range(1, 3):
        model.feed_data(fixed_batch())
        model.optimize_parameters(it)
    log = model.get_current_log()
    assert {"l_pix", "l_ipr", "l_g_gan", "l_d_real", "l_d_fake"} <= set(log)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.adversarial.net_d.parameters()))
    assert "net_d" in model.networks_to_save()


def test_gan_discriminator_steps_every_iteration_and_alone_before_net_d_init_iters(stage_options):
    model = gan_stage_two_model(stage_options, net_d_init_iters=2)
    nets = {"g": model.net_g, "g_ema": model.net_g_ema, "d": model.adversarial.net_d}

    def step_and_report_changes(it):
        before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
        model.feed_data(fixed_batch())
        model.optimize_parameters(it)
        return {name for name, net in nets.items()
                if any(not torch.equal(a, b) for a, b in zip(before[name], net.parameters()))}

    for it in (1, 2):
        assert step_and_report_changes(it) == {"d"}
        log = model.get_current_log()
        assert set(log) == {"l_d_real", "l_d_fake", "out_d_real", "out_d_fake"}, log
        assert all(math.isfinite(v) for v in log.values())
    assert step_and_report_changes(3) == {"g", "g_ema", "d"}
    assert {"l_pix", "l_g_gan", "l_d_real", "l_d_fake"} <= set(model.get_current_log())


def test_every_optimiser_gets_the_configured_type_and_the_options_keep_it(stage_options):
    # basicsr's setup_optimizers pops optim_g.type in place, which made the encoder-phase optimiser Adam
    model = gan_stage_two_model(stage_options, optim_g={"type": "AdamW", "lr": 1e-3, "weight_decay": 0.01})
    assert type(model.optimizer_g) is torch.optim.AdamW and type(model.optimizer_e) is torch.optim.AdamW
    assert model.optimizer_e.defaults["weight_decay"] == 0.01
    assert type(model.optimizer_d) is torch.optim.Adam
    assert model.opt["train"]["optim_g"]["type"] == "AdamW" and model.opt["train"]["optim_d"]["type"] == "Adam"


def test_perceptual_loss_without_vgg_weights_names_the_file(workdir, stage_options, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(workdir / "empty_hub"))
    opt_path, opt = stage_options(1)
    opt["train"]["perceptual_opt"] = {"type": "PerceptualLoss", "layer_weights": {"conv5_4": 1.0}}
    opt_path.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        model_from(opt_path)


def test_bf16_autocast_step_runs_on_cpu(stage_options):
    opt_path, _ = stage_options(1, amp="bf16")
    model = model_from(opt_path)
    model.feed_data(fixed_batch())
    model.optimize_parameters(1)
    assert torch.isfinite(torch.tensor(model.get_current_log()["l_pix"]))


def test_official_x4_block_without_scale_builds_sr_from_the_top_level_scale(stage_options):
    opt_path, opt = stage_options(1)
    opt["network_g"].pop("scale")
    opt_path.write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))
    model = model_from(opt_path)
    assert (model.net_g.task, model.net_g.scale) == ("sr", 4)
    opt["scale"] = 1  # the official deblurring files: top-level scale 1, no network scale
    complete_network_scale(opt)
    assert "scale" not in opt["network_g"]


def test_deblur_progressive_schedule_through_the_pipeline(workdir, tiny_diffir, basicsr_log, monkeypatch):
    """The official deblurring recipe's progressive patch/batch schedule, shrunk to 4 iterations."""
    for split in ("train", "val"):
        for kind in ("target", "input"):
            (workdir / "gopro" / split / kind).mkdir(parents=True)
        for path in (workdir / "demo_data" / split).glob("*.png"):
            sharp = cv2.imread(str(path))[:64, :96]
            cv2.imwrite(str(workdir / "gopro" / split / "target" / path.name), sharp)
            cv2.imwrite(str(workdir / "gopro" / split / "input" / path.name), cv2.blur(sharp, (9, 1)))
    opt = load_yaml(str(REPO / "options" / "train" / "Deblur" / "train_DiffIRS1.yml"))
    opt["num_gpu"] = 0
    opt["network_g"].update(tiny_diffir)
    train = opt["datasets"]["train"]
    train.update(dataroot_gt="gopro/train/target", dataroot_lq="gopro/train/input", num_worker_per_gpu=0,
                 dataset_enlarge_ratio=10,
                 batch_size_per_gpu=4, mini_batch_sizes=[4, 2], iters=[2, 2], gt_size=48, gt_sizes=[32, 48])
    opt["datasets"]["val"].update(dataroot_gt="gopro/val/target", dataroot_lq="gopro/val/input")
    opt["train"]["scheduler"].update(periods=[2, 2], restart_weights=[1, 1], eta_mins=[3e-4, 1e-6])
    opt["train"]["total_iter"] = 4
    opt["val"]["val_freq"] = 4
    opt["logger"].update(print_freq=1, save_checkpoint_freq=4, use_tb_logger=False)
    (workdir / "deblur.yml").write_text(yaml.dump(opt, Dumper=ordered_yaml()[1]))

    seen = []
    from diffir.models.diffir_s1_model import DiffIRS1Model
    original = DiffIRS1Model.feed_data

    def recording_feed(self, data):
        seen.append(tuple(data["gt"].shape))
        original(self, data)

    monkeypatch.setattr(DiffIRS1Model, "feed_data", recording_feed)
    exp = run_train(["-opt", str(workdir / "deblur.yml")])
    train_shapes = seen[:4]
    assert train_shapes == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 48, 48), (2, 3, 48, 48)]
    assert (exp / "models" / "net_g_4.pth").is_file()
    assert "Validation GoPro-val-crops" in basicsr_log.text
