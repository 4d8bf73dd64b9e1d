"""The safe YAML loader of option files; a leaf module (yaml and the standard library only).

basicsr's ``ordered_yaml`` constructs arbitrary Python objects (``!!python/object/apply:os.system``
would run); :class:`OptionLoader` reads plain YAML only.
"""
from __future__ import annotations

import os.path as osp

import yaml


class OptionLoader(yaml.SafeLoader):
    """Plain YAML only (no Python objects); mappings keep their order (plain dicts do)."""


def load_yaml(path: str) -> dict:
    if not osp.isfile(path):
        raise FileNotFoundError(f"option file not found: {path}")
    with open(path) as f:
        try:
            opt = yaml.load(f, Loader=OptionLoader)
        except yaml.YAMLError as err:
            raise ValueError(f"option file {path} is not valid plain YAML (Python object tags such as "
                             f"!!python/... are refused): {err}") from err
    if not isinstance(opt, dict):
        raise ValueError(f"option file {path} does not hold a mapping of options")
    return opt
