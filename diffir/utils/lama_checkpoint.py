"""Official DiffIR inpainting checkpoints (LaMa-framework PyTorch Lightning ``.ckpt``) -> diffir files.

The official inpainting code trains inside LaMa's Lightning module, so its checkpoints hold one
``state_dict`` with every submodule of that module under its attribute name:

* ``generator.*``: the trained network (DiffIRS1 in stage one, DiffIRS2 in stage two);
* ``generatorS1.*`` (stage-two files): the frozen stage-one network that supplied the target IPR;
* ``discriminator.*``: the pix2pixHD NLayerDiscriminator;
* ``loss_resnet_pl.*``, ``val_evaluator.*``, ``test_evaluator.*`` ...: loss networks and metrics,
  not needed here and dropped;

plus Lightning bookkeeping (``hyper_parameters`` as omegaconf objects, optimizer states, ...).
After the prefix is stripped the generator keys are exactly the official DiffIR keys, which are
ours, so a strict load reproduces the official network; the configuration (dim 52, blocks
[1, 1, 1, 9] or the big [1, 1, 1, 20] with n_encoder_res 8, ...) is read from the tensor shapes.

The file is read with ``torch.load(weights_only=True)``: the Python objects Lightning pickled (omegaconf
configs and the like) are replaced by inert placeholders, so neither omegaconf nor Lightning is needed
and nothing in the file is executed.

Command line::

    python -m diffir.utils.lama_checkpoint path/to/last.ckpt out_dir/

writes ``out_dir/net_g.pth`` (``{'params': ...}``, for ``path.pretrain_network_g`` or inference),
``out_dir/net_g_S1.pth`` for stage-two files (``path.pretrain_network_S1``) and ``out_dir/net_d.pth``
(``path.pretrain_network_d``), and prints the matching ``network_g`` / ``network_S1`` / ``network_d``
option blocks. Existing files are kept: if any of them exists nothing is written unless
``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..archs.detect import infer_network_options
from ..checkpoint import CheckpointError, read_lightning_checkpoint
from .atomic import atomic_torch_save

PARTS = {"generator.": "generator", "generatorS1.": "generator_s1", "discriminator.": "discriminator"}


def infer_discriminator_options(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """The ``network_d`` block of an NLayerDiscriminator state dict (``model0`` ... ``model{n + 1}``)."""
    stages = {int(k.split(".")[0][len("model"):]) for k in state_dict if k.startswith("model")}
    if "model0.0.weight" not in state_dict or stages != set(range(len(stages))) or len(stages) < 3:
        raise CheckpointError(f"not an NLayerDiscriminator state dict (keys {list(state_dict)[:5]})")
    first = state_dict["model0.0.weight"]
    return {"type": "NLayerDiscriminator", "input_nc": int(first.shape[1]), "ndf": int(first.shape[0]),
            "n_layers": len(stages) - 2, "norm": "batch" if "model1.1.running_mean" in state_dict else "none"}


@dataclass
class ConvertedCheckpoint:
    """The parts of a Lightning inpainting checkpoint, as diffir state dicts and option blocks."""

    generator: dict[str, torch.Tensor]
    network_g: dict
    generator_s1: dict[str, torch.Tensor] | None = None
    network_s1: dict | None = None
    discriminator: dict[str, torch.Tensor] | None = None
    network_d: dict | None = None
    dropped: list[str] = field(default_factory=list)  # top-level prefixes left out (losses, evaluators)


def convert_lama_checkpoint(checkpoint: str | os.PathLike | Mapping) -> ConvertedCheckpoint:
    """Split a Lightning inpainting checkpoint (a path or its loaded dict) into diffir state dicts."""
    content = read_lightning_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else checkpoint
    state_dict = content.get("state_dict", content)
    parts: dict[str, dict] = {name: {} for name in PARTS.values()}
    dropped = set()
    for key, value in state_dict.items():
        prefix = next((p for p in PARTS if key.startswith(p)), None)
        if prefix is None:
            dropped.add(key.split(".")[0])
        else:
            parts[PARTS[prefix]][key[len(prefix):]] = value
    if not parts["generator"]:
        raise CheckpointError(f"no 'generator.*' weights in the checkpoint (top-level prefixes: "
                              f"{sorted({k.split('.')[0] for k in state_dict})})")
    converted = ConvertedCheckpoint(generator=parts["generator"], network_g=infer_network_options(parts["generator"]),
                                    dropped=sorted(dropped))
    if parts["generator_s1"]:
        converted.generator_s1 = parts["generator_s1"]
        converted.network_s1 = infer_network_options(parts["generator_s1"])
    if parts["discriminator"]:
        converted.discriminator = parts["discriminator"]
        converted.network_d = infer_discriminator_options(parts["discriminator"])
    return converted


def save_converted(converted: ConvertedCheckpoint, out_dir: str | os.PathLike,
                   overwrite: bool = False) -> dict[str, Path]:
    """Write basicsr-format files (``{'params': state_dict}``) for each part; returns {part: path}.

    If any of the files exists, nothing is written (FileExistsError) unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    parts = {name: weights for name, weights in (("net_g", converted.generator), ("net_g_S1", converted.generator_s1),
                                                 ("net_d", converted.discriminator)) if weights is not None}
    paths = {name: out_dir / f"{name}.pth" for name in parts}
    for path in paths.values():
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; give --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, weights in parts.items():
        atomic_torch_save({"params": {k: v.contiguous() for k, v in weights.items()}}, paths[name])
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Convert an official DiffIR inpainting Lightning checkpoint "
                                                 "into diffir/basicsr weight files.")
    parser.add_argument("checkpoint", help="the official .ckpt (or .pth with a Lightning 'state_dict')")
    parser.add_argument("out_dir", help="folder for net_g.pth, net_g_S1.pth and net_d.pth")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace those files if they exist (default: refuse, and write nothing)")
    args = parser.parse_args(argv)
    converted = convert_lama_checkpoint(args.checkpoint)
    try:
        written = save_converted(converted, args.out_dir, overwrite=args.overwrite)
    except FileExistsError as err:
        parser.exit(2, f"error: {err}\n")
    for path in written.values():
        print(f"wrote {path}")
    if converted.dropped:
        print(f"left out: {', '.join(converted.dropped)}")
    blocks = {"network_g": converted.network_g, "network_S1": converted.network_s1, "network_d": converted.network_d}
    yaml.safe_dump({k: v for k, v in blocks.items() if v is not None}, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
