"""DiffIR for ComfyUI: copy or link this folder into ``ComfyUI/custom_nodes/`` (see docs/integrations.md).

Needs the diffir package in ComfyUI's Python (``pip install /path/to/diffir``). Loading this folder

* registers DiffIR with spandrel, so the built-in "Load Upscale Model" and "Upscale Image (using
  Model)" nodes take DiffIR super-resolution and deblurring files (.pth or .safetensors) from
  ``models/upscale_models``;
* adds the "DiffIR Restore" node (image/upscaling): seed, tiles with one shared IPR, the blend of two
  checkpoints, and inpainting with a MASK.
"""
from diffir.integrations import spandrel as _diffir_spandrel
from diffir.integrations.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

_diffir_spandrel.install()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
