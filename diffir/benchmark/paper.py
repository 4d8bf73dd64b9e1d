"""DiffIR's reported results (paper Tables 1-4, as recorded in paper-facts §4), to print beside ours.

A benchmark set is matched to a paper set by keywords in its name (case and punctuation ignored):
"Set14", "set_14" and "set14_LR" all match Set14; inpainting sets need the dataset and the mask
kind, e.g. "celeba_random_thick_256" matches CelebA-HQ wide masks (LaMa's thick = the paper's wide).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PaperSet:
    name: str
    task: str  # the network task: 'sr', 'deblur' or 'inpaint'
    table: str
    keywords: tuple[tuple[str, ...], ...]  # any one tuple whose words all occur in the set name
    results: dict  # metric -> value
    note: str = ""


PAPER_SETS = (
    # Table 2: x4 SR with GAN (PSNR on Y with crop 4, LPIPS alex)
    PaperSet("Set14", "sr", "Table 2", (("set14",),), {"psnr": 27.73, "lpips": 0.1117}),
    PaperSet("Urban100", "sr", "Table 2", (("urban100",),), {"psnr": 26.05, "lpips": 0.1007}),
    PaperSet("Manga109", "sr", "Table 2", (("manga109",),), {"psnr": 30.32, "lpips": 0.0463}),
    PaperSet("General100", "sr", "Table 2", (("general100",),), {"psnr": 30.58, "lpips": 0.0717}),
    PaperSet("DIV2K100", "sr", "Table 2", (("div2k",),), {"psnr": 29.13, "lpips": 0.0871}),
    # Table 3: real-world x4 SR (LPIPS with the VGG backbone in the RealSR metric scripts)
    PaperSet("RealSRSet", "sr", "Table 3", (("realsr",), ("canon",)), {"psnr": 27.65, "lpips": 0.3527},
             note="LPIPS (VGG)"),
    PaperSet("NTIRE2020-Track1", "sr", "Table 3", (("ntire2020",),), {"psnr": 27.31, "lpips": 0.3088},
             note="LPIPS (VGG)"),
    # Table 4: motion deblurring (MATLAB PSNR / SSIM on RGB)
    PaperSet("GoPro", "deblur", "Table 4", (("gopro",),), {"psnr": 33.20, "ssim": 0.963}),
    PaperSet("HIDE", "deblur", "Table 4", (("hide",),), {"psnr": 31.55, "ssim": 0.947}),
    # Table 1: inpainting (Places at 512, CelebA-HQ at 256)
    PaperSet("Places, narrow masks", "inpaint", "Table 1", (("place", "narrow"), ("place", "thin")),
             {"fid": 0.4913, "lpips": 0.0758}),
    PaperSet("Places, wide masks", "inpaint", "Table 1", (("place", "wide"), ("place", "thick")),
             {"fid": 1.9788, "lpips": 0.1306}),
    PaperSet("CelebA-HQ, narrow masks", "inpaint", "Table 1", (("celeba", "narrow"), ("celeba", "thin")),
             {"fid": 4.5967, "lpips": 0.0769}),
    PaperSet("CelebA-HQ, wide masks", "inpaint", "Table 1", (("celeba", "wide"), ("celeba", "thick")),
             {"fid": 5.1440, "lpips": 0.0918}),
)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_paper_set(set_name: str, task: str) -> PaperSet | None:
    """The paper's set for a benchmark set name and network task, or None."""
    name = _normalise(set_name)
    for paper_set in PAPER_SETS:
        if paper_set.task == task and any(all(word in name for word in words) for words in paper_set.keywords):
            return paper_set
    return None
