"""DiffIR in spandrel: the model loader behind ComfyUI, chaiNNer and InvokeAI.

    import spandrel
    import diffir.integrations.spandrel as diffir_spandrel

    diffir_spandrel.install()                                  # once; safe to call again
    model = spandrel.ModelLoader().load_from_file("DiffIRS2-GAN.pth").eval()
    sr = model(image)                                          # (1, 3, H, W) in [0, 1]

:func:`install` adds a ``DiffIR`` architecture to spandrel's ``MAIN_REGISTRY``. It recognises
stage-two checkpoints, official or ours, ``.pth`` or ``.safetensors`` (spandrel unwraps
``params_ema`` / ``params`` / ``state_dict`` and strips ``module.``; the ``generator.`` prefix of the
official inpainting Lightning files is stripped here), and reads the network configuration from the
tensor shapes with :func:`diffir.archs.detect.infer_network_options`.

* Super-resolution and deblurring give an ``ImageModelDescriptor``; inpainting gives a
  ``MaskedImageModelDescriptor`` (image and mask, 1 = hole; known pixels come back unchanged).
* The descriptor's ``model`` is the :class:`~diffir.archs.diffir_arch.DiffIRS2` itself (official
  state-dict keys). Calling the descriptor draws the IPR diffusion's initial noise from :data:`SEED`
  per image on the CPU, as ``Restorer.restore(..., seed=SEED)`` does, so one image gives one output
  in every host.
* ``size_requirements.multiple_of`` is the network's size multiple: spandrel (and hosts that tile)
  pad to it by reflection, as :class:`~diffir.Restorer` does.
* Stage-one checkpoints are recognised and refused: they need the ground truth to restore.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from spandrel import (
    MAIN_REGISTRY,
    Architecture,
    ArchRegistry,
    ArchSupport,
    ImageModelDescriptor,
    MaskedImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    UnsupportedModelError,
)

from ..archs.diffir_arch import DiffIRS2
from ..archs.detect import infer_network_options, network_for_state_dict
from ..checkpoint import CheckpointError
from ..inpainting import composite, prepare_inpainting_input
from ..restorer import initial_noise
from ..zoo import PRESETS

ARCH_ID = "DiffIR"
SEED = 0  # the IPR diffusion's initial noise, as Restorer(seed=0)
_LIGHTNING_PREFIX = "generator."  # the official inpainting (LaMa-framework) Lightning files
_STAGE_KEYS = ("condition.E.0.weight", "E.E.0.weight")  # CPEN of stage two / stage one


def _generator_weights(state_dict: Mapping) -> Mapping:
    """The network's weights: a Lightning file's ``generator.*`` part without its prefix, else all of them."""
    if f"{_LIGHTNING_PREFIX}G.patch_embed.proj.weight" in state_dict:
        n = len(_LIGHTNING_PREFIX)
        return {k[n:]: v for k, v in state_dict.items() if k.startswith(_LIGHTNING_PREFIX)}
    return state_dict


def detect(state_dict: Mapping) -> bool:
    """A DiffIR state dict of either stage (stage one is detected so that loading can say why it is refused)."""
    weights = _generator_weights(state_dict)
    if "G.patch_embed.proj.weight" not in weights or not any(key in weights for key in _STAGE_KEYS):
        return False
    try:
        infer_network_options(weights)
    except CheckpointError:
        return False
    return True


def variant(options: Mapping) -> str:
    """A short name of the network: 'sr-x4', 'sr-x2', 'sr-x1', 'deblur' or 'inpaint'."""
    if "scale" in options:
        return f"sr-x{options['scale']}"
    return "inpaint" if options["inp_channels"] == 4 else "deblur"


def _tags(options: Mapping) -> list[str]:
    tags = ["DiffIR", options["type"], variant(options), f"{options['dim']}dim"]
    official = [name for name, preset in PRESETS.items() if preset == options]
    return tags + [f"official-{name}" for name in official]


def _noise(net: DiffIRS2, image: torch.Tensor) -> torch.Tensor:
    return initial_noise(image.shape[0], SEED).to(image.device, next(net.parameters()).dtype)


def _restore(net: DiffIRS2, image: torch.Tensor) -> torch.Tensor:
    return net(image, noise=_noise(net, image))


@torch.no_grad()  # not inference_mode: spandrel clamps the result in place after the call
def _inpaint(net: DiffIRS2, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # spandrel's masked-image call neither switches to eval nor disables autograd itself
    net.eval()
    mask = (mask > 0.5).to(image.dtype)  # hosts may give soft masks; the network was trained on binary ones
    prediction = net(prepare_inpainting_input(image, mask), noise=_noise(net, image))
    return composite(prediction, image, mask)


class DiffIRArch(Architecture[DiffIRS2]):
    """Stage-two DiffIR networks (SR x4 / x2 / x1, deblurring, inpainting) for spandrel."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name="DiffIR", detect=detect)

    def load(self, state_dict: Mapping) -> ImageModelDescriptor[DiffIRS2] | MaskedImageModelDescriptor[DiffIRS2]:
        state_dict = _generator_weights(state_dict)
        options = infer_network_options(state_dict)
        if options["type"] != "DiffIRS2":
            raise UnsupportedModelError(
                "this is a DiffIR stage-one (DiffIRS1) checkpoint: it needs the ground-truth image to restore "
                "and is only used to train stage two; load the stage-two (DiffIRS2) file of the same release")
        net = network_for_state_dict(state_dict, options, "the DiffIR checkpoint")
        common = dict(architecture=self, tags=_tags(options),
                      # both checked against fp32 on the CPU (tests/test_spandrel.py); in fp16 the
                      # DIRformer normalises q and k before their product so that it cannot overflow
                      supports_half=True, supports_bfloat16=True,
                      output_channels=options["out_channels"],
                      size_requirements=SizeRequirements(multiple_of=net.size_multiple),
                      # one global IPR per input and image-wide (transposed) attention: tiles restored
                      # separately can differ in tone; the diffir node tiles with one shared IPR instead
                      tiling=ModelTiling.DISCOURAGED)
        if net.task == "inpaint":
            return MaskedImageModelDescriptor(net, state_dict, purpose="Inpainting", input_channels=3,
                                              call_fn=_inpaint, **common)
        return ImageModelDescriptor(net, state_dict, purpose="SR" if net.scale > 1 else "Restoration",
                                    scale=net.scale, input_channels=options["inp_channels"],
                                    call_fn=_restore, **common)


def install(registry: ArchRegistry = MAIN_REGISTRY) -> bool:
    """Add the DiffIR architecture to ``registry`` (spandrel's main one by default).

    Idempotent: returns True when it was added, False when it was there already.
    """
    return bool(registry.add(ArchSupport.from_architecture(DiffIRArch()), ignore_duplicates=True))
