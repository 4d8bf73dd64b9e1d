#!/usr/bin/env python
"""Write a fixed, seeded inpainting mask set for a folder of images (as the CelebA-HQ / Places protocols do).

One PNG per image, same name and size, white = hole:

    python scripts/generate_masks.py datasets/celeba-hq/val_256 datasets/celeba-hq/masks_thick_256 \
        --preset thick_256 --seed 0

Each mask depends only on (seed, image name), so the set is reproducible and does not change when
images are added. Presets are LaMa's evaluation configurations (see diffir/data/masks.py for their
hole-fraction statistics); --min-coverage / --max-coverage restrict the hole fraction further.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from diffir.data.masks import MASK_PRESETS, MaskGenerator, generate_mask_set  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image_dir", help="folder of images")
    parser.add_argument("mask_dir", help="output folder (created) for <image name>.png masks")
    parser.add_argument("--preset", default="thick_256", choices=sorted(MASK_PRESETS),
                        help="mask distribution (default: thick_256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-coverage", type=float, default=None, help="smallest hole fraction kept")
    parser.add_argument("--max-coverage", type=float, default=None, help="largest hole fraction kept")
    parser.add_argument("--overwrite", action="store_true", help="replace masks already in mask_dir")
    args = parser.parse_args(argv)

    options = {"preset": args.preset}
    if args.min_coverage is not None:
        options["min_hole_fraction"] = args.min_coverage
    if args.max_coverage is not None:
        options["max_hole_fraction"] = args.max_coverage
    coverage = generate_mask_set(args.image_dir, args.mask_dir, MaskGenerator.from_options(options),
                                 seed=args.seed, overwrite=args.overwrite)
    fractions = np.array(list(coverage.values()))
    print(f"wrote {len(coverage)} masks to {args.mask_dir} (preset {args.preset}, seed {args.seed}); hole fraction "
          f"mean {fractions.mean():.3f}, min {fractions.min():.3f}, max {fractions.max():.3f}")


if __name__ == "__main__":
    main()
