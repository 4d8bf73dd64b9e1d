"""Score the demo stage-two model against bicubic on the held-out photos and restore a sample.

    python scripts/demo_report.py [--model experiments/demo_DiffIRS2_x4/models/net_g_latest.pth]

PSNR is measured as the SR papers do: Y channel, crop_border = scale, on LR images made with
MATLAB-style bicubic downscaling of the held-out photos.
"""
import argparse
import glob
import os

import cv2
import numpy as np

import diffir  # noqa: F401  (before basicsr)
from basicsr.metrics import calculate_psnr
from basicsr.utils.matlab_functions import imresize

from diffir.restorer import Restorer

SCALE = 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="experiments/demo_DiffIRS2_x4/models/net_g_latest.pth")
    parser.add_argument("--opt", default="options/demo/test_demo_DiffIRS2_x4.yml")
    parser.add_argument("--images", default="demo_data/val")
    parser.add_argument("--output", default="results/demo")
    args = parser.parse_args()

    restorer = Restorer.from_pretrained(args.model, options=args.opt, device="cpu")
    os.makedirs(args.output, exist_ok=True)

    rows = []
    for path in sorted(glob.glob(os.path.join(args.images, "*.png"))):
        gt = cv2.imread(path).astype(np.float32) / 255.0
        gt = gt[: gt.shape[0] // SCALE * SCALE, : gt.shape[1] // SCALE * SCALE]
        lr = imresize(gt, 1 / SCALE)
        bicubic = np.clip(imresize(lr, SCALE), 0, 1)
        ours = restorer.restore(lr[:, :, ::-1], seed=0)[:, :, ::-1]  # BGR; seeded, so the report is reproducible
        psnr = [calculate_psnr(x * 255, gt * 255, crop_border=SCALE, test_y_channel=True) for x in (bicubic, ours)]
        rows.append((os.path.basename(path), *psnr))
        name = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(args.output, f"{name}_x4_diffir.png"), (ours * 255).round().astype(np.uint8))

    print(f"{'image':<24}{'bicubic PSNR':>14}{'DiffIR S2 PSNR':>16}")
    for name, bicubic_psnr, ours_psnr in rows:
        print(f"{name:<24}{bicubic_psnr:>14.2f}{ours_psnr:>16.2f}")
    mean_bicubic, mean_ours = (float(np.mean([r[i] for r in rows])) for i in (1, 2))
    print(f"{'mean':<24}{mean_bicubic:>14.2f}{mean_ours:>16.2f}   ({mean_ours - mean_bicubic:+.2f} dB over bicubic)")
    print(f"restored images: {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
