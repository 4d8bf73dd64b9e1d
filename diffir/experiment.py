"""An experiment folder that nothing else touches while it runs, and that keeps what it is given.

* :func:`check_name`: ``name`` from an option file is one path component, so an experiment or result
  stays inside ``experiments/`` / ``results/`` (``../x``, ``/abs`` and ``a/b`` are refused).
* :class:`ExperimentLock`: a running training holds ``experiments/.<name>.lock`` (``fcntl.flock``, the
  PID written inside). A second run of the same name refuses, naming that process, instead of archiving
  the live folder under it. The lock sits next to the folder, not in it, so it also covers a fresh run
  archiving an old folder; the kernel drops it when its process dies, so a stale file never blocks.
* :func:`remove_partial_writes`: temporary files of :mod:`diffir.utils.atomic` left by a killed save
  (checkpoints, training states, validation images).
* :func:`save_options_version` / :func:`previous_options`: every start keeps its options as
  ``options_<time>.yml`` (never overwritten); :func:`resume_changes` compares a resumed run's options
  with the previous ones and splits the differences into those a resume applies and those it cannot.
"""
from __future__ import annotations

import fcntl
import glob
import os
import os.path as osp
import re
import sys

import yaml

from .utils.atomic import atomic_write_bytes
from .yaml_io import load_yaml


class ExperimentError(RuntimeError):
    """The experiment cannot start; the message says why and what to do."""


def check_name(name, what: str = "name") -> str:
    """``name`` if it is a single, non-special path component; :class:`ValueError` otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"option {what!r} must be a non-empty string, got {name!r}")
    if name in (".", "..") or any(c in name for c in ("/", "\\", os.sep, os.altsep or "/", "\0")):
        raise ValueError(f"option {what!r} is {name!r}: it names a folder under experiments/ or results/ and must "
                         f"be a single folder name (no '/', '\\', '..' or absolute path)")
    return name


class ExperimentLock:
    """Exclusive right to run experiment ``name`` under ``experiments_dir``; release with :meth:`release`."""

    def __init__(self, experiments_dir: str, name: str):
        os.makedirs(experiments_dir, exist_ok=True)
        self.path = osp.join(experiments_dir, f".{check_name(name)}.lock")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ExperimentError(f"experiment {name!r} is being trained by process {holder} (lock {self.path}); "
                                  f"wait for it to end or choose another name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it could race a new holder)
            self.fd = None


# diffir.utils.atomic.replacing's temporary names: ".NAME.<pid>.<8 hex>" + ".tmp" or the format's suffix
_PARTIAL = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.\w+$")


def remove_partial_writes(experiment_root: str) -> list[str]:
    """Delete the temporary files a killed save left anywhere in the experiment folder and list them;
    call it while holding the lock (a running save of the same experiment would lose its file)."""
    removed = []
    for folder, _, names in os.walk(experiment_root):
        for name in names:
            if _PARTIAL.match(name):
                os.remove(osp.join(folder, name))
                removed.append(osp.join(folder, name))
    return removed


def option_versions(experiment_root: str) -> list[str]:
    return sorted(glob.glob(osp.join(glob.escape(experiment_root), "options_*.yml")))


def previous_options(experiment_root: str) -> tuple[str, dict] | None:
    """The newest saved options of an experiment, as (file, options); ``None`` if none was saved."""
    versions = option_versions(experiment_root)
    return (versions[-1], load_yaml(versions[-1])) if versions else None


def save_options_version(user_opt: dict, experiment_root: str, time_str: str, source: str) -> str:
    """Keep ``user_opt`` (read from ``source``) as ``options_<time>.yml`` in the experiment folder, with
    the command line; never replaces a file."""
    path = osp.join(experiment_root, f"options_{time_str}.yml")
    n = 1
    while osp.exists(path):
        path = osp.join(experiment_root, f"options_{time_str}_{n}.yml")
        n += 1
    header = f"# options of the run started by: {' '.join(sys.argv)}\n# read from {source}, --force_yml applied\n"
    atomic_write_bytes(path, (header + yaml.safe_dump(user_opt, sort_keys=False)).encode())
    return path


# option keys (dotted, '*' matches within one level) of the learning-rate schedule: a resumed run replays it
LEARNING_RATE = ("train.optim_*.lr", "train.scheduler.*", "train.warmup_iter", "train.lr_*", "train.gamma_*")
# option keys a resumed run can take over from an edited option file
RESUMABLE = (
    *LEARNING_RATE, "name", "manual_seed", "num_gpu", "compile", "find_unused_parameters",
    "train.total_iter", "train.grad_clip", "train.max_nonfinite_steps",
    "logger.*", "val.*", "path.*", "dist_params.*", "datasets.val*", "datasets.test*",
    "datasets.train.num_worker_per_gpu", "datasets.train.prefetch_mode", "datasets.train.pin_memory",
    "datasets.train.persistent_workers",
)
_MISSING = "<absent>"


def _flat(opt, prefix=""):
    if isinstance(opt, dict):
        out = {}
        for key, value in opt.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: opt}


def _matches(key: str, patterns) -> bool:
    parts = key.split(".")
    for pattern in patterns:
        pat = pattern.split(".")
        if len(parts) >= len(pat) and all(re.fullmatch(p.replace("*", ".*"), k) for p, k in zip(pat, parts)):
            return True
    return False


def changes_learning_rate(changes: list[str]) -> bool:
    """Whether any of the :func:`resume_changes` lines ``changes`` concerns the learning-rate schedule."""
    return any(_matches(change.split(":")[0], LEARNING_RATE) for change in changes)


def resume_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(applicable, refused): 'key: old -> new' lines for the options that differ between two runs."""
    old_flat, new_flat = _flat(old), _flat(new)
    applicable, refused = [], []
    for key in list(old_flat) + [k for k in new_flat if k not in old_flat]:
        before, after = old_flat.get(key, _MISSING), new_flat.get(key, _MISSING)
        if before != after:
            (applicable if _matches(key, RESUMABLE) else refused).append(f"{key}: {before!r} -> {after!r}")
    return applicable, refused
