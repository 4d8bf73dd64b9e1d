"""Which DiffIR network a state dict describes, read from its keys and tensor shapes.

What spandrel does per architecture: an official checkpoint loads without its option file.
:func:`infer_network_options` reads dim from ``G.patch_embed.proj``, blocks per level by counting
block indices, heads from ``attn.temperature``, the FFN factor from ``ffn.project_in``, BiasFree vs
WithBias from LayerNorm biases, ``n_encoder_res`` from CPEN's residual blocks, the task from the head
(``tail`` = SR, ``output`` = deblurring / inpainting) and the SR scale from how many input channels the
pixel-unshuffled LR image gives the first convolution (3 / 12 / 48 for x4 / x2 / x1).
:func:`network_for_state_dict` builds that network and loads it strictly. Reading the files is
:mod:`diffir.checkpoint`'s job.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn
from basicsr.archs import build_network as basicsr_build_network
from basicsr.utils.registry import ARCH_REGISTRY

from ..checkpoint import CheckpointError
from .cpen import GT_UNSHUFFLE

STAGE_TYPES = ("DiffIRS1", "DiffIRS2")
_SR_SCALE_OF_UNSHUFFLE = {1: 4, 2: 2, 4: 1}


# --------------------------------------------------------------------------- configuration
def _count(state_dict: Mapping, prefix: str, suffix: str = "") -> int:
    """How many distinct numbered children ``prefix<j>.`` have a key ending in ``suffix``."""
    indices = set()
    for key in state_dict:
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if index.isdigit() and rest.endswith(suffix):
                indices.add(int(index))
    return len(indices)


def _ffn_expansion_factor(pairs: list[tuple[int, int]]) -> float:
    """The shortest decimal f with ``int(channels * f) == hidden`` for every (channels, hidden) pair."""
    low = max(h / c for c, h in pairs)
    high = min((h + 1) / c for c, h in pairs)
    for decimals in range(7):
        step = 10.0 ** -decimals
        first = math.ceil(low / step - 1e-9)
        for candidate in (round(first * step, decimals), round((first + 1) * step, decimals)):
            if candidate < high and all(int(c * candidate) == h for c, h in pairs):
                return int(candidate) if float(candidate).is_integer() else candidate
    raise CheckpointError(f"no ffn_expansion_factor reproduces the FFN widths (channels, hidden) {pairs}")


def infer_network_options(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The ``network_g`` option block (``type`` included) that builds a network matching ``state_dict``."""
    if "G.patch_embed.proj.weight" not in state_dict:
        raise CheckpointError("not a DiffIR checkpoint: it has no 'G.patch_embed.proj.weight' "
                              f"(first keys: {list(state_dict)[:5]})")
    if "condition.E.0.weight" in state_dict:
        net_type, cpen = "DiffIRS2", "condition"
    elif "E.E.0.weight" in state_dict:
        net_type, cpen = "DiffIRS1", "E"
    else:
        raise CheckpointError("the checkpoint has DIRformer weights (G.*) but no CPEN (neither 'E.E.*' of stage "
                              "one nor 'condition.E.*' of stage two)")
    embed = state_dict["G.patch_embed.proj.weight"]
    dim, embed_in = embed.shape[0], embed.shape[1]
    levels = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    default_heads = (1, 2, 4, 8)
    heads = []
    for level, default in zip(levels, default_heads):
        temperature = state_dict.get(f"G.{level}.0.attn.temperature")
        heads.append(int(temperature.shape[0]) if temperature is not None else default)
    ffn_pairs = sorted({(int(v.shape[1]), int(v.shape[0]) // 2) for k, v in state_dict.items()
                        if k.startswith("G.") and k.endswith(".ffn.project_in.weight")})

    options = {"type": net_type, "n_encoder_res": _count(state_dict, f"{cpen}.E.", "body.0.weight")}
    if "G.tail.1.weight" in state_dict:
        out_channels = int(state_dict["G.tail.1.weight"].shape[0])
        unshuffle = math.isqrt(embed_in // out_channels)
        if unshuffle not in _SR_SCALE_OF_UNSHUFFLE or unshuffle ** 2 * out_channels != embed_in:
            raise CheckpointError(f"SR checkpoint with {embed_in} input channels into G.patch_embed for "
                                  f"{out_channels} output channels: not the x4 / x2 / x1 layout")
        options.update(inp_channels=out_channels, out_channels=out_channels)
        scale = _SR_SCALE_OF_UNSHUFFLE[unshuffle]
    elif "G.output.weight" in state_dict:
        options.update(inp_channels=int(embed_in), out_channels=int(state_dict["G.output.weight"].shape[0]))
        scale = None
    else:
        raise CheckpointError("the DIRformer has neither an SR tail ('G.tail.*') nor an output conv ('G.output.*')")
    options.update(
        dim=int(dim),
        num_blocks=[_count(state_dict, f"G.{level}.") for level in levels],
        num_refinement_blocks=_count(state_dict, "G.refinement."),
        heads=heads,
        ffn_expansion_factor=_ffn_expansion_factor(ffn_pairs),
        bias=any(k.startswith("G.") and k.endswith(".attn.qkv.bias") for k in state_dict),
        LayerNorm_type="WithBias" if any(k.endswith(".norm1.body.bias") for k in state_dict) else "BiasFree",
    )
    if scale is not None:
        options["scale"] = scale
    if "G.skip_conv.weight" in state_dict:
        options["dual_pixel_task"] = True
    if net_type == "DiffIRS2":
        betas = state_dict.get("diffusion.betas")
        if betas is None:
            raise CheckpointError("stage-two checkpoint without the diffusion schedule ('diffusion.betas')")
        options.update(n_denoise_res=_count(state_dict, "denoise.resmlp.", "resmlp.0.weight"),
                       linear_start=round(float(betas[0]), 6), linear_end=round(float(betas[-1]), 6),
                       timesteps=int(betas.numel()))
    _check_cpen_input(state_dict, options, cpen)
    return options


def _check_cpen_input(state_dict: Mapping, options: dict, cpen: str) -> None:
    """CPEN's first conv must take what the inferred task feeds it (catches foreign look-alikes)."""
    unshuffle = 4 // options["scale"] if "scale" in options else GT_UNSHUFFLE
    expected = options["inp_channels"] * unshuffle ** 2
    if cpen == "E":
        expected += options["out_channels"] * GT_UNSHUFFLE ** 2
    actual = int(state_dict[f"{cpen}.E.0.weight"].shape[1])
    if actual != expected:
        raise CheckpointError(f"'{cpen}.E.0.weight' takes {actual} input channels, but a {options['type']} with "
                              f"inp_channels={options['inp_channels']} and scale={options.get('scale')} feeds it "
                              f"{expected}; the checkpoint does not follow the DiffIR layout")


# --------------------------------------------------------------------------- building and loading
def build_network(options: Mapping) -> nn.Module:
    """Build a registered network from its option block (``type`` plus constructor arguments)."""
    if "type" not in options:
        raise ValueError(f"network options need a 'type' (e.g. DiffIRS2), got keys {sorted(options)}")
    if options["type"] not in ARCH_REGISTRY:
        raise ValueError(f"unknown network type {options['type']!r}: not in basicsr's ARCH_REGISTRY "
                         f"(DiffIR's are {', '.join(STAGE_TYPES)})")
    return basicsr_build_network(dict(options))


def network_for_state_dict(state_dict: Mapping[str, torch.Tensor], options: Mapping | None = None,
                           origin: str = "the checkpoint") -> nn.Module:
    """Build a network for ``state_dict`` and load it strictly; returned in eval mode.

    Without ``options`` the configuration is inferred from the weights. With them, a missing
    ``scale`` is taken from the weights: the official SR option files leave it out because the
    official classes default to x4.
    """
    if options is None:
        options = infer_network_options(state_dict)
    else:
        options = dict(options)
        if "scale" not in options and "task" not in options and "G.tail.1.weight" in state_dict:
            options["scale"] = infer_network_options(state_dict).get("scale")
    net = build_network(options)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        try:
            hint = f" The weights describe: {infer_network_options(state_dict)}."
        except CheckpointError:
            hint = ""
        raise CheckpointError(f"{origin} does not fit the network options {options}: {err}{hint}") from err
    return net.eval()
