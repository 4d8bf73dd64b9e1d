"""The "DiffIR Restore" ComfyUI node (loaded by the ``comfyui_diffir/`` custom-node folder).

It restores with :class:`diffir.Restorer`, so unlike the generic "Upscale Image (using Model)" node
it tiles large images with one IPR shared by every tile, and it exposes what DiffIR adds: the seed
of the IPR diffusion, the tile size and overlap, and the fidelity <-> perception blend of two
checkpoints of one architecture (e.g. the L1- and the GAN-trained real-world SR models).

ComfyUI conventions: IMAGE is a (B, H, W, C) float tensor in [0, 1]; MASK is (B, H, W) or (H, W),
1 = the area to fill. Model files are listed from ComfyUI's ``models/upscale_models`` folder; without
ComfyUI (tests, scripts) a model is a file path or a diffir zoo name.
"""
from __future__ import annotations

import torch

from ..restorer import NETWORK_TASK, Restorer, check_task, initial_noise

MODEL_FOLDER = "upscale_models"  # ComfyUI's folder for spandrel models, shared with Load Upscale Model
NO_MODEL = "none"
_loaded: dict = {}  # the last loaded network, by (model, model2, blend, device): nodes run again and again


def _comfy_model_files() -> list[str] | None:
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths.get_filename_list(MODEL_FOLDER)


def _model_path(name: str) -> str:
    try:
        import folder_paths
    except ImportError:
        return name
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        raise FileNotFoundError(f"model {name!r} is not in ComfyUI's models/{MODEL_FOLDER} folder")
    return path


def _device() -> torch.device | str:
    try:
        import comfy.model_management
    except ImportError:
        return "auto"
    return comfy.model_management.get_torch_device()


def _progress_bar(total: int):
    try:
        from comfy.utils import ProgressBar
    except ImportError:
        return None
    return ProgressBar(total)


def _load(model: str, model2: str, blend: float, device) -> torch.nn.Module:
    key = (model, model2, blend, str(device))
    if key not in _loaded:
        _loaded.clear()  # keep one network in memory
        second = None if model2 == NO_MODEL else _model_path(model2)
        restorer = Restorer.from_pretrained(_model_path(model), model2=second, blend=blend if second else 0.0,
                                            device=device)
        _loaded[key] = restorer.net
    return _loaded[key]


class DiffIRRestore:
    """Super-resolution, deblurring or inpainting with a stage-two DiffIR checkpoint."""

    CATEGORY = "image/upscaling"
    FUNCTION = "restore"
    RETURN_TYPES = ("IMAGE",)
    DESCRIPTION = ("DiffIR (ICCV 2023) image restoration: one compact prior vector per image, shared by all "
                   "tiles; seeded, so a seed gives the same result every time.")

    @classmethod
    def INPUT_TYPES(cls):
        files = _comfy_model_files()
        model = (files,) if files is not None else ("STRING", {"default": "demo-sr-x4"})
        model2 = ([NO_MODEL, *files],) if files is not None else ("STRING", {"default": NO_MODEL})
        return {
            "required": {
                "image": ("IMAGE",),
                "model": model,
                "task": (["auto", *NETWORK_TASK],),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "initial noise of the IPR diffusion (0: as spandrel hosts)"}),
                "tile": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8,
                                 "tooltip": "tile side in input pixels; 0: the whole image at once"}),
                "tile_overlap": ("INT", {"default": 32, "min": 0, "max": 1024, "step": 8}),
                "model2": model2,
                "blend": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                    "tooltip": "0: model only (fidelity) ... 1: model2 only (perception)"}),
            },
            "optional": {"mask": ("MASK", {"tooltip": "inpainting: 1 (white) = fill"})},
        }

    def restore(self, image: torch.Tensor, model: str, task: str, seed: int, tile: int, tile_overlap: int,
                model2: str, blend: float, mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        if image.dim() != 4 or image.shape[-1] < 3:
            raise ValueError(f"IMAGE must be (B, H, W, C) with C >= 3, got {tuple(image.shape)}")
        if blend and model2 == NO_MODEL:
            raise ValueError("blend needs a second model (model2) to interpolate towards")
        device = _device()
        restorer = Restorer(_load(model, model2, blend, device), device=device,
                            tile=tile or None, tile_overlap=tile_overlap)
        check_task(restorer, None if task == "auto" else task, None)
        lq = image[..., :3].permute(0, 3, 1, 2).float()
        masks = None
        if mask is not None:
            masks = mask.reshape(-1, 1, *mask.shape[-2:]).float().expand(lq.shape[0], 1, -1, -1)
        elif restorer.task == "inpaint":
            raise ValueError("this is an inpainting model: connect a MASK (white = fill)")

        batch = lq.shape[0]
        bar = _progress_bar(batch)
        outputs = []
        for i in range(batch):
            progress = None if bar is None else _image_progress(bar, i, batch)
            # one seed for the batch: every image gets the noise it would get alone (Restorer's convention)
            out = restorer.restore_tensor(lq[i:i + 1], None if masks is None else masks[i:i + 1],
                                          initial_noise(1, seed), progress=progress)
            outputs.append(out.clamp_(0, 1).permute(0, 2, 3, 1).cpu())
        return (torch.cat(outputs),)


def _image_progress(bar, index: int, batch: int):
    """Restorer's ``progress(done, total)`` for image ``index`` of ``batch``, shown on ComfyUI's bar."""
    return lambda done, total: bar.update_absolute(index * total + done, batch * total)


NODE_CLASS_MAPPINGS = {"DiffIRRestore": DiffIRRestore}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffIRRestore": "DiffIR Restore"}

