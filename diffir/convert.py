"""``diffir-convert``: DiffIR checkpoints to ``.safetensors``, and SHA-256 sums to record for downloads.

    diffir-convert DiffIRS2-GAN.pth DiffIRS2-GAN.safetensors     # basicsr / official .pth
    diffir-convert last.ckpt DiffIRS2-celeba.safetensors         # official inpainting Lightning file
    diffir-convert --hash DiffIRS2-GAN.safetensors               # prints the SHA-256

The input is read as every diffir loader reads it (:func:`diffir.checkpoint.read_state_dict`: no
code in it runs; ``params_ema`` preferred over ``params``; a Lightning file's ``generator.*``). The
network must load strictly into the configuration inferred from its shapes, and that configuration
goes into the output's metadata with the source file's name and SHA-256, so the file alone says what
it is. The output is written atomically and an existing one is kept unless ``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .archs.detect import infer_network_options, network_for_state_dict
from .checkpoint import CheckpointError, read_state_dict
from .utils.safetensors_io import save_state_dict
from .version import __version__
from .zoo import sha256_file


def convert(source: str | Path, target: str | Path, param_key: str = "params_ema", overwrite: bool = False) -> dict:
    """Write ``source``'s network weights to the safetensors file ``target``; returns the metadata written."""
    source, target = Path(source), Path(target)
    if target.suffix != ".safetensors":
        raise ValueError(f"the output {target} must end in .safetensors")
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; give --overwrite to replace it")
    if target.exists() and target.resolve() == source.resolve():
        raise ValueError(f"the output {target} is the input file")
    state_dict, where = read_state_dict(source, param_key)
    options = infer_network_options(state_dict)
    network_for_state_dict(state_dict, options, f"{source} ({where})")  # refuses weights that do not load strictly
    metadata = {"format": "pt", "diffir.version": __version__, "diffir.source": source.name,
                "diffir.source_sha256": sha256_file(source), "diffir.source_key": where}
    save_state_dict(state_dict, target, metadata, network_options=options)
    return {**metadata, "network_g": options}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="diffir-convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="a .pth / .ckpt DiffIR checkpoint (basicsr, official or Lightning)")
    parser.add_argument("output", nargs="?", help="the .safetensors file to write")
    parser.add_argument("--param-key", default="params_ema",
                        help="which weights of a basicsr file (default params_ema, else params)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--hash", nargs="+", metavar="FILE", help="print the SHA-256 of each FILE and exit")
    args = parser.parse_args(argv)
    try:
        if args.hash:
            if args.input:
                parser.error("--hash takes only files to hash")
            for name in args.hash:
                print(f"{sha256_file(name)}  {name}")
            return 0
        if not args.output:
            parser.error("give an input checkpoint and an output .safetensors file (or --hash FILE)")
        written = convert(args.input, args.output, args.param_key, args.overwrite)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"diffir-convert: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {written['network_g']['type']} from {args.input} "
          f"(sha256 {written['diffir.source_sha256']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
