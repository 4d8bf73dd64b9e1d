"""The training loop behind ``train.py``: basicsr's pipeline, made device-agnostic and resumable.

Differences from ``basicsr.train.train_pipeline``: options and datasets are checked before anything
starts (clear errors for unknown keys, missing folders, mismatched pairs, wrong sizes, unreadable
files); CPU and gloo DDP work; a running experiment holds a lock on its name, so a second run of the
same name refuses instead of archiving the live folder; training states load with
``weights_only=True`` (:mod:`diffir.training_state`), and ``--auto_resume`` skips damaged ones;
resuming never renames or archives the experiment folder, compares the options with those the run
was started with (applying new total_iter, logging; refusing a changed network, data or batch size),
always sets the learning rates and schedule from the current options, and keeps every version of the
options (``options_<time>.yml``); rank 0 alone decodes the datasets' images; a run resumed
mid-epoch continues that epoch's sample order where it stopped (:class:`ResumableSampler`); the
deblurring progressive patch/batch schedule is applied to each batch.
"""
from __future__ import annotations

import copy
import datetime
import itertools
import logging
import os
import os.path as osp
import time
import warnings

import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.utils import (AvgTimer, MessageLogger, get_env_info, get_root_logger, get_time_str, init_tb_logger,
                           make_exp_dirs)
from basicsr.utils.options import dict2str

from .data.checks import check_dataset_options
from .data.progressive import ProgressiveSchedule
from .experiment import (ExperimentError, ExperimentLock, previous_options, remove_partial_writes, resume_changes,
                         save_options_version)
from .options import close_distributed, parse_options
from .training_state import newest_loadable_state, read_training_state


class ResumableSampler(EnlargedSampler):
    """basicsr's EnlargedSampler (DDP share per rank included) that can start an epoch part-way through.

    ``set_epoch(epoch, start)`` drops the first ``start`` indices of this process's share of the epoch,
    so a run resumed mid-epoch draws the same sample indices in the same order as the uninterrupted run,
    without loading the skipped images. Random augmentations (crops, flips) may still differ: they use
    the numpy/python RNGs of the loading processes, which a resumed run does not put back where the
    uninterrupted run had them (loader worker processes are reseeded every epoch).
    """

    start = 0

    def set_epoch(self, epoch, start=0):
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self):
        return self.num_samples - self.start


def find_resume_state(opt: dict) -> tuple[str, dict, list[str]] | None:
    """(file, state, damaged) to resume from: the newest state that loads with ``--auto_resume``
    (``damaged``: the newer ones skipped, with the reason), else ``path.resume_state``; ``None`` for a
    fresh run."""
    if opt["auto_resume"]:
        return newest_loadable_state(opt["path"]["training_states"])
    path = opt["path"].get("resume_state")
    return None if path is None else (path, read_training_state(path), [])


def check_resumed_options(user_opt: dict, resume_path: str) -> list[str] | None:
    """Compare the options of a resumed run with those its experiment last ran with.

    Raises :class:`ExperimentError` listing the differences a resume cannot take (network, data,
    batch size, ...); returns those it applies (learning rates, schedule, total_iter, logging, ...),
    ``None`` when the experiment kept no options to compare with (made by an older version).
    """
    previous = previous_options(osp.dirname(osp.dirname(osp.abspath(resume_path))))
    if previous is None:
        return None
    applicable, refused = resume_changes(previous[1], user_opt)
    if refused:
        raise ExperimentError(f"cannot resume from {resume_path} with these options: they differ from those of the "
                              f"run that made it ({previous[0]}) in ways a resumed run cannot follow:\n  "
                              + "\n  ".join(refused) + "\nrestore them, or start a new experiment (another name)")
    return applicable


def apply_learning_rate_options(model, fresh: tuple[list, list], current_iter: int, warmup_iter: int) -> None:
    """Make the learning rates those the current options give at ``current_iter``.

    ``model.resume_training`` restores the optimisers' and schedulers' hyper-parameters as saved; this
    puts back those built from the current options (``fresh``: parameter-group settings and scheduler
    states taken before resuming) and replays the schedule up to ``current_iter``. Every resume does
    this, changed options or not: the newest ``options_*.yml`` is that of the newest start, which need
    not be the run that wrote the training state (a resumed run killed before its first checkpoint), so
    "no difference" from it does not mean the state holds the current learning rates. The schedulers
    are deterministic in the iteration, so replaying gives the uninterrupted run's values when nothing
    changed.
    """
    groups, schedulers = fresh
    for optimizer, saved_groups in zip(model.optimizers, groups):
        for group, saved in zip(optimizer.param_groups, saved_groups):
            group.update(saved)
    for scheduler, state in zip(model.schedulers, schedulers):
        scheduler.load_state_dict(state)
    with warnings.catch_warnings():  # torch warns of scheduler steps without optimiser steps: intended here
        warnings.simplefilter("ignore", UserWarning)
        for it in range(1, current_iter + 1):
            model.update_learning_rate(it, warmup_iter=warmup_iter)


def _hyper_parameters(model) -> tuple[list, list]:
    groups = [[{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in o.param_groups]
              for o in model.optimizers]
    return groups, [copy.deepcopy(s.state_dict()) for s in model.schedulers]


def on_rank_zero(opt: dict, work, error_on_other_ranks, describe=str):
    """Run ``work()`` on rank 0 alone and return its result there (None on the other ranks).

    If it raised, every rank raises, so that no rank goes on while rank 0 stops: rank 0 its own
    exception, the others ``error_on_other_ranks(describe(exception))``.
    """
    result, error, shared = None, None, [None]
    if opt["rank"] == 0:
        try:
            result = work()
        except Exception as err:
            error, shared = err, [describe(err)]
    if opt["dist"]:
        torch.distributed.broadcast_object_list(shared, src=0)
    if error is not None:
        raise error
    if shared[0] is not None:
        raise error_on_other_ranks(shared[0])
    return result


def check_datasets(opt: dict) -> None:
    """Rank 0 checks the datasets, decoding every image (a damaged one would stop the run hours in);
    every rank raises if that failed. One process decodes and writes the decode cache, not each rank."""
    def check():
        for dataset_opt in opt["datasets"].values():
            check_dataset_options(dataset_opt, decode=True)

    on_rank_zero(opt, check, lambda message: ValueError(f"rank 0 found a problem in the datasets: {message}"),
                 describe=lambda err: f"{type(err).__name__}: {err}")


def take_experiment_lock(opt: dict) -> ExperimentLock | None:
    """Rank 0 locks the experiment's name; every rank raises if that failed."""
    return on_rank_zero(opt, lambda: ExperimentLock(osp.dirname(opt["path"]["experiments_root"]), opt["name"]),
                        ExperimentError)


def create_dataloaders(opt: dict, logger):
    train_loader = train_sampler = None
    val_loaders = []
    for phase, dataset_opt in opt["datasets"].items():
        if phase == "train":
            enlarge = dataset_opt.get("dataset_enlarge_ratio", 1)
            train_set = build_dataset(dataset_opt)
            train_sampler = ResumableSampler(train_set, opt["world_size"], opt["rank"], enlarge)
            train_loader = build_dataloader(train_set, dataset_opt, num_gpu=opt["num_gpu"], dist=opt["dist"],
                                            sampler=train_sampler, seed=opt["manual_seed"])
            logger.info(f"{len(train_set)} training images, batch {dataset_opt['batch_size_per_gpu']} per process "
                        f"x {opt['world_size']} processes, {len(train_loader)} iterations per epoch")
        elif dataset_opt["phase"] == "val":
            val_set = build_dataset(dataset_opt)
            val_loaders.append(build_dataloader(val_set, dataset_opt, num_gpu=opt["num_gpu"], dist=opt["dist"],
                                                sampler=None, seed=opt["manual_seed"]))
            logger.info(f"{len(val_set)} validation images in {dataset_opt['name']}")
        else:
            raise ValueError(f"datasets.{phase}: phase must be 'train' or start with 'val'")
    if train_loader is None:
        raise ValueError("datasets.train is missing")
    if len(train_loader) == 0:  # the loader drops incomplete batches: an epoch would be empty forever
        train_opt = opt["datasets"]["train"]
        raise ValueError(f"datasets.train: {len(train_loader.dataset)} images x dataset_enlarge_ratio "
                         f"{train_opt.get('dataset_enlarge_ratio', 1)} do not fill one batch of "
                         f"{train_opt['batch_size_per_gpu']} per process x {opt['world_size']} processes; "
                         f"raise dataset_enlarge_ratio or lower batch_size_per_gpu")
    return train_loader, train_sampler, val_loaders


def make_prefetcher(opt: dict, train_loader):
    mode = opt["datasets"]["train"].get("prefetch_mode")
    if mode in (None, "cpu"):
        return CPUPrefetcher(train_loader)
    if mode == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("datasets.train.prefetch_mode 'cuda' needs a GPU")
        return CUDAPrefetcher(train_loader, opt)
    raise ValueError(f"datasets.train.prefetch_mode must be ~, 'cpu' or 'cuda', got {mode!r}")


def train_pipeline(argv=None) -> str:
    """Run training from the command line arguments; returns the experiment folder."""
    opt, args = parse_options(is_train=True, argv=argv)
    check_datasets(opt)
    lock = take_experiment_lock(opt)
    try:
        return _train(opt, args)
    finally:
        if lock is not None:
            lock.release()


def _train(opt: dict, args) -> str:
    # the log file is opened once the folder exists: what happens before is logged after that
    removed = remove_partial_writes(opt["path"]["experiments_root"]) if opt["rank"] == 0 else []
    resume = find_resume_state(opt)
    resume_path, resume_state, damaged = resume if resume is not None else (None, None, [])
    changed = [] if resume is None else check_resumed_options(args.user_opt, resume_path)
    if opt["dist"]:  # every rank has compared the options before rank 0 writes this run's version
        torch.distributed.barrier()
    if resume_state is None and not opt["auto_resume"]:
        make_exp_dirs(opt)  # a fresh run archives an existing folder of the same name, as basicsr does
    elif opt["rank"] == 0:
        for key in ("experiments_root", "models", "training_states", "visualization"):
            os.makedirs(opt["path"][key], exist_ok=True)
    if opt["rank"] == 0:  # every start keeps its options; none is overwritten
        save_options_version(args.user_opt, opt["path"]["experiments_root"], get_time_str(), args.opt)
    if opt["dist"]:
        torch.distributed.barrier()

    logger = get_root_logger(logger_name="basicsr", log_level=logging.INFO,
                             log_file=osp.join(opt["path"]["log"], f"train_{opt['name']}_{get_time_str()}.log"))
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    if removed:
        logger.info(f"removed {len(removed)} partial file(s) of an interrupted save: {', '.join(removed)}")
    for reason in damaged:
        logger.warning(f"skipped a damaged training state: {reason}")
    if changed is None:
        logger.warning(f"the experiment of {resume_path} keeps no options_*.yml of its earlier runs: this run's "
                       f"options cannot be compared with those the training state was made with")
    elif changed:
        logger.info("resumed with changed options (applied): " + "; ".join(changed))
    tb_logger = None
    if opt["logger"].get("use_tb_logger") and "debug" not in opt["name"] and opt["rank"] == 0:
        tb_logger = init_tb_logger(log_dir=osp.join(opt["root_path"], "tb_logger", opt["name"]))

    train_loader, train_sampler, val_loaders = create_dataloaders(opt, logger)
    total_iters = int(opt["train"]["total_iter"])
    torch.backends.cudnn.benchmark = True  # fixed patch sizes: cuDNN picks its fastest kernels once (as basicsr)
    model = build_model(opt)
    iters_per_epoch = len(train_loader)  # every epoch has this many: the loader drops incomplete batches
    start_epoch = current_iter = batches_done = 0
    if resume_state is not None:
        fresh = _hyper_parameters(model)
        model.resume_training(resume_state)
        current_iter = resume_state["iter"]
        apply_learning_rate_options(model, fresh, current_iter, opt["train"].get("warmup_iter", -1))
        # where an uninterrupted run is after current_iter iterations; the data order continues from there
        start_epoch, batches_done = divmod(current_iter, iters_per_epoch)
        if not 0 <= current_iter - resume_state["epoch"] * iters_per_epoch <= iters_per_epoch:
            logger.warning(f"training state of epoch {resume_state['epoch']} at iter {current_iter} does not fit "
                           f"{iters_per_epoch} iterations per epoch (dataset or batch options changed?): "
                           f"the data order is not the interrupted run's")
        model.last_saved_state = resume_path
        logger.info(f"resumed from {resume_path}: epoch {start_epoch}, iter {current_iter}, "
                    f"{batches_done} of its {iters_per_epoch} batches done")

    schedule = ProgressiveSchedule.from_options(opt["datasets"]["train"])
    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetcher = make_prefetcher(opt, train_loader)
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    logger.info(f"start training from epoch {start_epoch}, iter {current_iter}")

    epoch = start_epoch
    while current_iter < total_iters:
        train_sampler.set_epoch(epoch, start=batches_done * train_loader.batch_size)
        batches_done = 0  # only the resumed epoch starts part-way
        prefetcher.reset()
        train_data = prefetcher.next()
        while train_data is not None and current_iter < total_iters:
            data_timer.record()
            current_iter += 1
            model.update_learning_rate(current_iter, warmup_iter=opt["train"].get("warmup_iter", -1))
            if schedule is not None:
                train_data["lq"], train_data["gt"] = schedule.crop(train_data["lq"], train_data["gt"], current_iter)
            model.feed_data(train_data)
            model.optimize_parameters(current_iter)
            iter_timer.record()
            if current_iter == 1:
                msg_logger.reset_start_time()
            if current_iter % opt["logger"]["print_freq"] == 0:
                log_vars = {"epoch": epoch, "iter": current_iter, "lrs": model.get_current_learning_rate(),
                            "time": iter_timer.get_avg_time(), "data_time": data_timer.get_avg_time()}
                log_vars.update(model.get_current_log())
                msg_logger(log_vars)
            if current_iter % opt["logger"]["save_checkpoint_freq"] == 0:
                logger.info("saving models and training state")
                model.save(epoch, current_iter)
            if opt.get("val") is not None and current_iter % opt["val"]["val_freq"] == 0:
                for val_loader in val_loaders:
                    model.validation(val_loader, current_iter, tb_logger, opt["val"].get("save_img", False))
            data_timer.start()
            iter_timer.start()
            train_data = prefetcher.next() if current_iter < total_iters else None  # no batch past the last
        epoch += 1

    logger.info(f"end of training, time consumed {datetime.timedelta(seconds=int(time.time() - start_time))}")
    model.save(epoch=-1, current_iter=-1)
    if opt.get("val") is not None and current_iter % opt["val"]["val_freq"] != 0:
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, opt["val"].get("save_img", False))
    if tb_logger:
        tb_logger.close()
    close_distributed()
    return opt["path"]["experiments_root"]
