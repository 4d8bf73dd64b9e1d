"""The bundled demo model (pretrained/) beats bicubic on the held-out demo photos."""
from pathlib import Path

import cv2
import numpy as np
from basicsr.metrics import calculate_psnr
from basicsr.utils.matlab_functions import imresize

from diffir import Restorer

REPO = Path(__file__).resolve().parents[1]


def test_demo_model_beats_bicubic_on_held_out_photos():
    restorer = Restorer.from_pretrained(str(REPO / "pretrained" / "demo_DiffIRS2_x4.safetensors"), device="cpu")
    gains = []
    for path in sorted((REPO / "demo_data" / "val").glob("*.png")):
        gt = cv2.imread(str(path))[..., ::-1]  # RGB uint8
        gt = gt[: gt.shape[0] // 4 * 4, : gt.shape[1] // 4 * 4]
        lr = np.clip(imresize(gt.astype(np.float32) / 255.0, 0.25) * 255.0, 0, 255).round().astype(np.uint8)
        bicubic = np.clip(imresize(lr.astype(np.float32) / 255.0, 4) * 255.0, 0, 255).round()
        restored = restorer.restore(lr, seed=0).astype(np.float64)
        assert restored.shape == gt.shape
        psnr = [calculate_psnr(x[..., ::-1], gt[..., ::-1].astype(np.float64), crop_border=4, test_y_channel=True)
                for x in (bicubic, restored)]
        gains.append(psnr[1] - psnr[0])
    assert np.mean(gains) > 0.5, gains
