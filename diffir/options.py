"""Reading basicsr-style YAML option files, with distributed setup that also works on CPU.

basicsr's ``parse_options`` initialises DDP with NCCL and ``torch.cuda.set_device`` only, so a
CPU (gloo) run under torchrun cannot start; this module keeps its option layout and conventions
(``-opt``, ``--launcher``, ``--auto_resume``, ``--force_yml``, ``experiments/<name>/...``) and
chooses the backend from the machine (``dist_params.backend`` overrides it).

Option files are parsed with a safe YAML loader (basicsr's ``ordered_yaml`` constructs arbitrary
Python objects: ``!!python/object/apply:os.system`` would run) and checked as a whole by
:func:`diffir.option_schema.validate_options` before anything starts; ``name`` must be one folder name.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import random

import torch
import torch.distributed as dist
import yaml
from basicsr.utils import set_random_seed
from basicsr.utils.dist_util import get_dist_info

from .experiment import check_name
from .option_schema import validate_options
from .yaml_io import OptionLoader, load_yaml  # diffir.options.load_yaml stays importable

REQUIRED_KEYS = {True: ("name", "model_type", "datasets", "network_g", "path", "train"),
                 False: ("name", "model_type", "datasets", "network_g")}


def build_arg_parser(is_train: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=f"diffir {'training' if is_train else 'testing'} from a YAML file")
    parser.add_argument("-opt", required=True, help="path to the option YAML file")
    parser.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                        help="'pytorch' under torchrun for DDP (NCCL on GPUs, gloo on CPU)")
    if is_train:  # training-only flags
        parser.add_argument("--auto_resume", action="store_true", help="continue from the newest training state")
        parser.add_argument("--debug", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    example = "train:total_iter=10" if is_train else "val:save_img=false"
    parser.add_argument("--force_yml", nargs="+", default=None, help=f"override options, e.g. {example}")
    parser.add_argument("--root", default=None,
                        help=f"folder for {'experiments' if is_train else 'results'}/ (default: cwd)")
    return parser


def init_distributed(opt: dict) -> None:
    backend = (opt.get("dist_params") or {}).get("backend")
    use_cuda = torch.cuda.is_available() and opt.get("num_gpu", 0) != 0
    if backend is None or (backend == "nccl" and not use_cuda):
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)


def close_distributed() -> None:
    """Wait for every process, then take the process group down.

    A process that exits with its gloo group still alive can abort (SIGABRT) while the
    interpreter shuts down, so a finished run would report failure at random.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def set_override(opt: dict, entry: str) -> None:
    """Apply ``a:b:c=value`` to an existing key of ``opt``."""
    keys, _, value = entry.partition("=")
    *parents, leaf = [k.strip() for k in keys.split(":")]
    node = opt
    for key in parents:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"--force_yml {entry!r}: no option {keys.strip()!r}")
        node = node[key]
    value = value.strip()
    try:  # plain YAML, as in option files (basicsr evaluates list values as Python)
        node[leaf] = None if value.lower() == "none" else yaml.load(value, Loader=OptionLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"--force_yml {entry!r}: the value is not plain YAML: {err}") from err


def parse_options(is_train: bool, argv=None) -> tuple[dict, argparse.Namespace]:
    """The options of ``-opt`` with ``--force_yml`` applied, validated, and completed for this run.

    ``args.user_opt`` keeps the validated options as the user gave them (what a run records and a
    resumed run is compared with).
    """
    args = build_arg_parser(is_train).parse_args(argv)
    opt = load_yaml(args.opt)
    missing = [k for k in REQUIRED_KEYS[is_train] if k not in opt]
    if missing:
        raise ValueError(f"{args.opt}: missing top-level option(s) {missing}")
    for entry in args.force_yml or ():
        set_override(opt, entry)
    validate_options(opt, is_train, source=args.opt)
    check_name(opt["name"])
    args.user_opt = copy.deepcopy(opt)

    if opt.get("num_gpu", 0) == "auto":
        opt["num_gpu"] = torch.cuda.device_count()
    opt.setdefault("num_gpu", 0)
    if opt["num_gpu"] and not torch.cuda.is_available():
        raise ValueError(f"{args.opt}: num_gpu is {opt['num_gpu']} but no CUDA device is available; "
                         f"set num_gpu: 0 (CPU) or auto")
    opt["dist"] = args.launcher != "none"
    if opt["dist"]:
        init_distributed(opt)
    opt["rank"], opt["world_size"] = get_dist_info()

    seed = opt.get("manual_seed")
    if seed is None:
        opt["manual_seed"] = seed = random.randint(1, 10000)
    set_random_seed(seed + opt["rank"])

    opt["auto_resume"] = is_train and args.auto_resume
    opt["is_train"] = is_train
    if is_train and args.debug and not opt["name"].startswith("debug"):
        opt["name"] = "debug_" + opt["name"]

    for phase, dataset in opt["datasets"].items():
        dataset["phase"] = phase.split("_")[0]
        if "scale" in opt:
            dataset["scale"] = opt["scale"]
        for key in ("dataroot_gt", "dataroot_lq"):
            if dataset.get(key) is not None:
                dataset[key] = osp.expanduser(dataset[key])

    opt.setdefault("path", {})
    for key, val in opt["path"].items():
        if val is not None and ("resume_state" in key or "pretrain_network" in key):
            opt["path"][key] = osp.expanduser(val)

    root = osp.abspath(args.root or os.getcwd())
    opt["root_path"] = root
    if is_train:
        exp = osp.join(root, "experiments", opt["name"])
        opt["path"].update(experiments_root=exp, models=osp.join(exp, "models"),
                           training_states=osp.join(exp, "training_states"), log=exp,
                           visualization=osp.join(exp, "visualization"))
    else:
        results = osp.join(root, "results", opt["name"])
        opt["path"].update(results_root=results, log=results, visualization=osp.join(results, "visualization"))
    return opt, args
