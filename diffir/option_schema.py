"""Check a whole option file before anything starts: unknown keys, wrong types, bad network options.

basicsr reads options where it needs them, so a misspelt key (``vall``, ``total_iters``) is silently
ignored or ends in a bare ``KeyError`` hours in, and a learning rate YAML reads as a string (``1e-3``
is one in YAML 1.1) fails inside torch. :func:`validate_options` raises :class:`OptionError` naming
the file, the key and what was expected, with a did-you-mean for unknown keys; numeric strings in
numeric fields are turned into numbers in place. Keys are those basicsr and diffir read (sections
below); the options of networks, losses, optimisers, schedulers and metrics are checked against the
constructor of the class their ``type`` names.
"""
from __future__ import annotations

import difflib
import inspect
import re

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from .models.base import OPTIMIZERS, SCHEDULERS
from .utils.safetensors_io import SAVE_FORMATS


class OptionError(ValueError):
    """An option file that cannot be used; the message names the file and the key."""


ANY, STR, BOOL, INT, FLOAT, LIST, DICT = "any", "a string", "true or false", "an integer", "a number", "a list", \
    "a mapping"

# basicsr's RealESRGAN(Net) models read their degradation settings at the top level
_DEGRADATION = {key: ANY for key in (
    "gt_usm", "l1_gt_usm", "percep_gt_usm", "gan_gt_usm", "high_order_degradation", "resize_prob", "resize_range",
    "gaussian_noise_prob", "noise_range", "poisson_scale_range", "gray_noise_prob", "jpeg_range", "second_blur_prob",
    "resize_prob2", "resize_range2", "gaussian_noise_prob2", "noise_range2", "poisson_scale_range2",
    "gray_noise_prob2", "jpeg_range2", "queue_size", "gt_size")}

TRAIN = {
    "total_iter": INT, "warmup_iter": INT, "ema_decay": FLOAT, "grad_accum_steps": INT, "grad_clip": FLOAT,
    "max_nonfinite_steps": INT, "amp": ANY, "optim_g": "optimizer", "optim_d": "optimizer", "scheduler": "scheduler",
    "net_d_iters": INT, "net_d_init_iters": INT, "encoder_iter": INT, "lr_encoder": FLOAT, "lr_sr": FLOAT,
    "gamma_encoder": FLOAT, "gamma_sr": FLOAT, "lr_decay_encoder": INT, "lr_decay_sr": INT,
    "diffusion_opt": DICT,
    # read by basicsr's other models (StyleGAN2, video, ...)
    "net_d_reg_every": INT, "net_g_reg_every": INT, "r1_reg_weight": FLOAT, "path_reg_weight": FLOAT,
    "path_batch_shrink": INT, "mixing_prob": FLOAT, "fix_flow": INT, "flow_lr_mul": FLOAT, "dcn_lr_mul": FLOAT,
    "lr_flow": FLOAT, "tsa_iter": INT,
}
VAL = {"val_freq": INT, "save_img": BOOL, "suffix": ANY, "metrics": "metrics", "pbar": BOOL, "seed": INT,
       "window_size": INT, "fid": DICT, "num_val_samples": INT, "center_frame_only": BOOL, "flip_seq": BOOL}
LOGGER = {"print_freq": INT, "save_checkpoint_freq": INT, "use_tb_logger": BOOL, "wandb": DICT,
          "save_format": SAVE_FORMATS}
PATH = {"resume_state": ANY, "ignore_resume_networks": ANY}
# basicsr's folder keys: diffir sets them (diffir.options.parse_options) over whatever a file gives
PATH_FROM_ROOT = ("root", "experiments_root", "models", "training_states", "log", "visualization", "results_root")
# basicsr's check_resume (not used by diffir) skips these when it points pretrain_network_* at the resumed
# weights; diffir resumes net_g (net_g_ema, net_d) from the training state and always loads network_S1
# from path.pretrain_network_S1, which is what the bundled files' 'ignore_resume_networks: network_S1' asks
IGNORED_ON_RESUME = ("network_S1",)
PATH_PATTERNS = (r"pretrain_network_\w+", r"param_key_\w+", r"strict_load_\w+")
DIST = {"backend": STR, "port": INT}
DATASET = {
    "name": STR, "type": STR, "phase": STR, "scale": INT, "io_backend": DICT,
    "dataroot_gt": ANY, "dataroot_lq": ANY, "dataroot_mask": ANY, "dataroot_flow": ANY, "meta_info": ANY,
    "meta_info_file": ANY, "filename_tmpl": STR, "gt_size": INT, "gt_sizes": LIST, "mini_batch_sizes": LIST,
    "iters": LIST, "use_hflip": BOOL, "use_rot": BOOL, "use_shuffle": BOOL, "num_worker_per_gpu": INT,
    "batch_size_per_gpu": INT, "dataset_enlarge_ratio": INT, "prefetch_mode": ANY, "pin_memory": BOOL,
    "persistent_workers": BOOL, "num_prefetch_queue": INT, "mean": ANY, "std": ANY, "color": ANY, "crop": ANY,
    "augment": ANY, "image_size": ANY, "out_size": ANY, "resize_short_side": ANY, "mask_generator": ANY,
    "mask_seed": ANY, "mask_suffix": ANY, "cache_data": BOOL, "num_frame": INT, "interval_list": LIST,
    "random_reverse": BOOL, "val_partition": ANY, "test_mode": BOOL, "padding": ANY, "flip_sequence": BOOL,
    "use_duf_downsampling": BOOL,
    # RealESRGANDataset's degradation settings
    **{key: ANY for key in (
        "blur_kernel_size", "kernel_list", "kernel_prob", "blur_sigma", "betag_range", "betap_range", "sinc_prob",
        "blur_kernel_size2", "kernel_list2", "kernel_prob2", "blur_sigma2", "betag_range2", "betap_range2",
        "sinc_prob2", "final_sinc_prob")},
}
_PLAIN = {BOOL: bool, STR: str, LIST: list}

TOP = {"name": STR, "model_type": STR, "scale": INT, "num_gpu": ANY, "manual_seed": INT, "compile": ANY,
       "find_unused_parameters": BOOL, "datasets": "datasets", "path": "path", "train": "train", "val": "val",
       "logger": "logger", "dist_params": "dist", **_DEGRADATION}


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, message: str):
        raise OptionError(f"{self.source}: {where}: {message}")

    def unknown(self, where: str, key: str, known) -> None:
        close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
        names = sorted(map(str, known))
        listed = ", ".join(names[:20]) + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")
        hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of: {listed}"
        self.fail(f"{where}{key}", f"unknown option{hint}")

    def value(self, node: dict, key, kind, where: str):
        """Check ``node[key]`` is of ``kind``, turning numeric strings into numbers in place."""
        value, at = node[key], f"{where}{key}"
        if value is None or kind == ANY:
            return
        if kind in (INT, FLOAT):
            if isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    self.fail(at, f"expected {kind}, got {value!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind == INT and not float(value).is_integer()):
                self.fail(at, f"expected {kind}, got {node[key]!r}")
            node[key] = int(value) if kind == INT else value
        elif isinstance(kind, tuple):  # one of a few names
            if value not in kind:
                self.fail(at, f"expected one of {', '.join(kind)}, got {value!r}")
        elif kind in _PLAIN:
            if not isinstance(value, _PLAIN[kind]):
                self.fail(at, f"expected {kind}, got {value!r}")
        else:  # a mapping, checked by the method named by ``kind`` unless it is any mapping
            if not isinstance(value, dict):
                self.fail(at, f"expected {DICT}, got {value!r}")
            if kind != DICT:
                getattr(self, kind)(value, at + ".")

    def section(self, node: dict, schema: dict, where: str, patterns=()) -> None:
        for key in list(node):
            if key in schema:
                self.value(node, key, schema[key], where)
            elif not any(re.fullmatch(p, str(key)) for p in patterns):
                self.unknown(where, key, schema)

    def registered(self, node: dict, registry, where: str, what: str, extra=()):
        name = node.get("type")
        if name is None:
            self.fail(f"{where}type", f"missing: the {what} to use")
        if name in extra:
            return None
        for key in (name, f"{name}_basicsr"):  # as basicsr's Registry.get finds its own classes
            if key in registry:
                return registry.get(key)
        self.unknown(where + "type=", name, [*registry.keys(), *extra])

    def signature(self, node: dict, target, where: str, skip=0, ignore=("type",)) -> None:
        """Check ``node``'s keys against the parameters of ``target`` (a class or function)."""
        params = list(inspect.signature(target).parameters.values())[skip:]
        if any(p.kind == p.VAR_KEYWORD for p in params):
            known = {p.name for p in params}
            accept_any = True
        else:
            known, accept_any = {p.name for p in params if p.kind != p.VAR_POSITIONAL}, False
        defaults = {p.name: p.default for p in params}
        for key in list(node):
            if key in ignore:
                continue
            if key not in known:
                if accept_any:
                    continue
                self.unknown(where, key, known)
            default, given = defaults.get(key), node[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                self.value(node, key, FLOAT, where)  # an integer default does not make 1e-6 wrong
                if isinstance(default, int) and isinstance(given, str) and float(node[key]).is_integer():
                    node[key] = int(node[key])

    # ------------------------------------------------------------------ sections
    def top(self, opt: dict, is_train: bool) -> None:
        for key in list(opt):
            if str(key).startswith("network_"):
                self.value(opt, key, DICT, "")
                if opt[key] is not None:
                    self.network(opt[key], f"{key}.")
            elif key in TOP:
                if key == "train" and not is_train:
                    continue  # a test run ignores a training section it may carry
                self.value(opt, key, TOP[key], "")
            else:
                self.unknown("", key, [*TOP, "network_g", "network_d", "network_S1"])

    def network(self, node: dict, where: str) -> None:
        cls = self.registered(node, ARCH_REGISTRY, where, "architecture")
        self.signature(node, cls.__init__, where, skip=1)

    def datasets(self, node: dict, where: str) -> None:
        for phase, dataset in node.items():
            if not isinstance(dataset, dict):
                self.fail(f"{where}{phase}", f"expected {DICT}, got {dataset!r}")
            self.section(dataset, DATASET, f"{where}{phase}.")

    def path(self, node: dict, where: str) -> None:
        for key in node:
            if key in PATH_FROM_ROOT:
                self.fail(f"{where}{key}", "set from --root and name, not from option files: experiments go to "
                                           "<root>/experiments/<name>, test results to <root>/results/<name> "
                                           "(<root>: --root, default the current folder); remove this key")
        ignored = node.get("ignore_resume_networks")
        names = [ignored] if isinstance(ignored, str) else ignored if isinstance(ignored, list) else [ignored]
        if ignored is not None and not set(map(str, names)) <= set(IGNORED_ON_RESUME):
            self.fail(f"{where}ignore_resume_networks",
                      f"diffir resumes the trained networks (net_g, net_g_ema, net_d) from the training state and "
                      f"always loads {', '.join(IGNORED_ON_RESUME)} from path.pretrain_network_*; it cannot leave "
                      f"out {ignored!r} (remove this key)")
        self.section(node, PATH, where, PATH_PATTERNS)

    def train(self, node: dict, where: str) -> None:
        self.section(node, TRAIN, where, patterns=(r"\w+_opt",))
        for key, loss in node.items():
            if key.endswith("_opt") and key not in TRAIN and loss is not None:
                self.value(node, key, DICT, where)
                if "type" in loss:
                    cls = self.registered(loss, LOSS_REGISTRY, f"{where}{key}.", "loss")
                    self.signature(loss, cls.__init__, f"{where}{key}.", skip=1)

    def optimizer(self, node: dict, where: str) -> None:
        self.registered(node, {}, where, "optimizer", extra=OPTIMIZERS)
        self.signature(node, OPTIMIZERS[node["type"]].__init__, where, skip=2)  # skip self, params

    def scheduler(self, node: dict, where: str) -> None:
        self.registered(node, {}, where, "learning-rate scheduler", extra=SCHEDULERS)
        self.signature(node, SCHEDULERS[node["type"]].__init__, where, skip=2)  # skip self, optimizer

    def val(self, node: dict, where: str) -> None:
        self.section(node, VAL, where)

    def metrics(self, node: dict, where: str) -> None:
        for name, metric in node.items():
            self.value(node, name, DICT, where)
            if metric is not None:
                fn = self.registered(metric, METRIC_REGISTRY, f"{where}{name}.", "metric")
                self.signature(metric, fn, f"{where}{name}.", skip=2)

    def logger(self, node: dict, where: str) -> None:
        self.section(node, LOGGER, where)

    def dist(self, node: dict, where: str) -> None:
        self.section(node, DIST, where)


def validate_options(opt: dict, is_train: bool, source: str = "options") -> dict:
    """Raise :class:`OptionError` for the first problem in ``opt``; numeric strings become numbers."""
    check = _Checker(source)
    check.top(opt, is_train)
    if opt.get("model_type") is not None:
        check.registered({"type": opt["model_type"]}, MODEL_REGISTRY, "model_", "model")
    for phase, dataset in (opt.get("datasets") or {}).items():
        check.registered(dataset, DATASET_REGISTRY, f"datasets.{phase}.", "dataset class")
    return opt
