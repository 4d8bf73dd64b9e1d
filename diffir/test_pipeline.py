"""The testing loop behind ``test.py``: restore every test set of an option file and score it.

Sets without ground truth (no ``dataroot_gt``, e.g. basicsr's SingleImageDataset) are restored
and saved with no metrics; the others are scored with ``val.metrics``.
"""
from __future__ import annotations

import logging
import os.path as osp

from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_root_logger, get_time_str, make_exp_dirs
from basicsr.utils.options import dict2str

from .data.checks import check_dataset_options
from .options import close_distributed, parse_options


def test_pipeline(argv=None) -> str:
    """Run testing from the command line arguments; returns the results folder."""
    opt, _ = parse_options(is_train=False, argv=argv)
    if not opt["path"].get("pretrain_network_g"):
        raise ValueError("path.pretrain_network_g: the checkpoint to test is not set")
    for dataset_opt in opt["datasets"].values():
        # every set is checked as a test set, whatever its key: test.py evaluates them all
        check_dataset_options(dataset_opt, phase="test")
    make_exp_dirs(opt)
    logger = get_root_logger(logger_name="basicsr", log_level=logging.INFO,
                             log_file=osp.join(opt["path"]["log"], f"test_{opt['name']}_{get_time_str()}.log"))
    logger.info(get_env_info())
    logger.info(dict2str(opt))

    loaders = []
    for _, dataset_opt in sorted(opt["datasets"].items()):
        test_set = build_dataset(dataset_opt)
        loaders.append((dataset_opt, build_dataloader(test_set, dataset_opt, num_gpu=opt["num_gpu"], dist=opt["dist"],
                                                      sampler=None, seed=opt["manual_seed"])))
        logger.info(f"{len(test_set)} test images in {dataset_opt['name']}")

    model = build_model(opt)
    val_opt = model.opt.setdefault("val", {})  # build_model keeps its own copy of the options
    val_opt.setdefault("suffix", None)
    all_metrics = val_opt.get("metrics")  # read-only: basicsr's calculate_metric copies each metric's options
    for dataset_opt, loader in loaders:
        has_gt = dataset_opt.get("dataroot_gt") is not None
        val_opt["metrics"] = all_metrics if has_gt else None
        if not has_gt:
            logger.info(f"{dataset_opt['name']}: no ground truth, saving outputs only")
        model.validation(loader, current_iter=opt["name"], tb_logger=None, save_img=val_opt.get("save_img", True))
    close_distributed()
    return opt["path"]["results_root"]
