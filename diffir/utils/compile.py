"""``torch.compile`` for training, testing and inference, from one ``compile`` option.

The option (YAML top-level key ``compile``, ``Restorer(compile=...)``, ``inference.py --compile``)
is one of:

* absent, ``None`` or ``False``: eager mode;
* ``True``: ``torch.compile`` in mode ``'default'`` (inductor);
* a mode name: ``'default'``, ``'reduce-overhead'`` (CUDA graphs on GPUs), ``'max-autotune'`` or
  ``'max-autotune-no-cudagraphs'``;
* a mapping of ``torch.compile`` arguments: ``mode``, ``backend``, ``fullgraph``, ``dynamic``,
  ``options``.

Unless the option sets ``dynamic``, graphs are specialised to each input shape (``dynamic=False``):
on the CPU a shape-generic graph of the full-size DIRformer ran several times slower than a
specialised one, and slower than eager mode. Each new input size then costs one more compilation
(minutes for the full-size network on a CPU); past 8 sizes (dynamo's ``recompile_limit``) new sizes
run eagerly.

Compiled graphs are reused across processes: inductor's on-disk FX graph cache (and AOTAutograd's,
for training) is kept on, in ``$XDG_CACHE_HOME/diffir/torchinductor`` (``~/.cache/...``) rather than
torch's default under ``/tmp``, which many systems clear. A second run at the same input size then
loads its graphs instead of compiling them again. ``TORCHINDUCTOR_CACHE_DIR`` set in the
environment takes precedence; ``TORCHINDUCTOR_FX_GRAPH_CACHE=0`` turns the cache off. For tiled
inference, all tiles share one size, so one graph serves a whole image.

For inference, ``options: {freezing: true}`` (inductor's freezing: the weights become constants of
the graph, and convolution weights are pre-packed) was the fastest setting on the test CPU; it is
refused in training, where the weights change after compilation.

On the CPU without autograd, the levels that the fast path runs on bands of rows in eager mode stay
out of the graph (graph breaks around them; unless ``fullgraph`` is asked for): with those levels
compiled on the whole map, the network ran up to 1.24x slower (``DIRformer.row_bands_outside_graph``).

Only the DIRformer of a DiffIR network is compiled: it is nearly all the compute, and CPEN and the
few IPR diffusion steps (a Python loop over timesteps) would only add graphs. Compilation is in
place (``nn.Module.compile``), so parameter names and state-dict keys stay those of the eager
network (no ``_orig_mod.`` prefix) and checkpoints are interchangeable.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is not imported here: command lines read MODES before parsing
    import torch.nn as nn

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ARGUMENTS = ("mode", "backend", "fullgraph", "dynamic", "options")


def compile_arguments(option, training: bool = False) -> dict | None:
    """The ``torch.compile`` keyword arguments a ``compile`` option asks for; None for eager mode.
    ``training``: refuse inductor's freezing, which bakes the weights into the graph as constants."""
    if option is None or option is False:
        return None
    if option is True:
        option = {}
    if isinstance(option, str):
        option = {"mode": option}
    if not isinstance(option, Mapping):
        raise ValueError(f"compile: expected true/false, a mode name {MODES} or a mapping of torch.compile "
                         f"arguments {ARGUMENTS}, got {option!r}")
    unknown = sorted(set(option) - set(ARGUMENTS))
    if unknown:
        raise ValueError(f"compile: unknown torch.compile argument(s) {unknown}; allowed: {list(ARGUMENTS)}")
    mode = option.get("mode")
    if mode is not None and mode not in MODES:
        raise ValueError(f"compile.mode: expected one of {MODES}, got {mode!r}")
    if training and frozen(option):
        raise ValueError("compile.options.freezing (or TORCHINDUCTOR_FREEZING=1): freezing makes the weights "
                         "constants of the graphs compiled without gradients, so validation during training would "
                         "keep the weights of its first run; use it for inference only (test.py, inference.py, "
                         "Restorer)")
    return {"dynamic": False, **option}


def frozen(option: Mapping) -> bool:
    """Whether inductor's freezing applies: asked in ``options``, else set in inductor's config (for
    instance by TORCHINDUCTOR_FREEZING=1)."""
    if "freezing" in (option.get("options") or {}):
        return bool(option["options"]["freezing"])
    import torch._inductor.config  # torch only once compiling

    return bool(torch._inductor.config.freezing)


def graph_cache_dir() -> Path:
    """Where compiled graphs are kept between processes unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffir" / "torchinductor"


def compile_network(net: nn.Module, option, training: bool = False) -> nn.Module:
    """Compile, in place, the DIRformer of a DiffIR network (``net.G``), or the whole of any other
    network, as ``option`` asks (see the module docstring; ``training`` as in :func:`compile_arguments`);
    returns ``net``."""
    arguments = compile_arguments(option, training)
    if arguments is not None:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # torch only once compiling

        # torch writes its /tmp default into the environment once inductor is imported: only a
        # directory set to something else is the user's choice
        if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, os.path.abspath(default_cache_dir())):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(graph_cache_dir())
        from diffir.archs.dirformer import DIRformer

        target = getattr(net, "G", net)
        for module in target.modules():
            if isinstance(module, DIRformer):
                module.row_bands_outside_graph = not arguments.get("fullgraph", False)
        target.compile(**arguments)
    return net
