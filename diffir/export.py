"""ONNX export of a stage-two DiffIR model, for deployment without PyTorch.

The exported graph takes a float32 ``lq`` of shape (B, 3, H, W) in [0, 1] (inpainting: the
4-channel ``cat(image * (1 - mask), mask)``) with dynamic batch, height and width, pads it to the
network's size multiple by reflection (so H and W must be at least that multiple, 8 for x4 SR), and
returns the restored (B, 3, H*scale, W*scale), unclamped. The IPR diffusion's initial noise is either
a second input ``noise`` (B, 256), or, with ``seed``, a constant baked into the graph, so the
deployed model is deterministic like ``Restorer(..., seed=seed)``.

:func:`check_onnx` runs the file with onnxruntime and returns the largest difference from PyTorch.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .archs.diffir_arch import DiffIRS2
from .restorer import initial_noise
from .utils.atomic import replacing
from .utils.padding import crop_to


class ExportableStageTwo(nn.Module):
    """DiffIRS2 eval forward with padding to the size multiple and cropping, in traceable form."""

    def __init__(self, net: DiffIRS2, seed: int | None = None):
        super().__init__()
        if not isinstance(net, DiffIRS2):
            raise TypeError(f"ONNX export needs a stage-two network (DiffIRS2), got {type(net).__name__}")
        self.net = net.eval()
        self.fixed_noise = seed is not None
        # the seeded noise as a constant; an empty buffer keeps the module layout the same either way
        self.register_buffer("noise", initial_noise(1, seed) if self.fixed_noise else torch.empty(0))

    def forward(self, lq: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        height, width = lq.shape[-2:]
        multiple, scale = self.net.size_multiple, self.net.scale
        # shape arithmetic on traced sizes stays symbolic, so the pad adapts to every input size
        padded = F.pad(lq, (0, (multiple - width % multiple) % multiple, 0, (multiple - height % multiple) % multiple),
                       mode="reflect")
        if self.fixed_noise:
            noise = self.noise.expand(lq.shape[0], -1)
        elif noise is None:
            raise ValueError("this export takes the IPR diffusion's initial noise (B, 256) as its second input; "
                             "give noise=, or build it with seed= to bake the noise in")
        ipr = self.net.estimate_ipr(padded, noise)
        return crop_to(self.net.restore_with_ipr(padded, ipr), (height, width), scale)


def export_onnx(net: DiffIRS2, path: str | os.PathLike, seed: int | None = None, example_size: int = 32,
                opset: int = 17, overwrite: bool = False) -> Path:
    """Write ``net`` to ``path`` as ONNX; ``seed`` bakes the initial noise in, otherwise it is an input.

    An existing ``path`` is an error (FileExistsError) unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; give --overwrite to replace it")
    net = copy.deepcopy(net).cpu()  # a copy: the caller's network stays on its device, with its impl
    net.impl = "plain"  # the reference DIRformer path traces to static-rank ONNX ops; same weights
    model = ExportableStageTwo(net, seed)
    lq = torch.rand(1, net.inp_channels, example_size, example_size)
    inputs, names = (lq,), ["lq"]
    dynamic = {"lq": {0: "batch", 2: "height", 3: "width"}, "restored": {0: "batch", 2: "out_height", 3: "out_width"}}
    if seed is None:
        inputs, names = (lq, initial_noise(1, 0)), ["lq", "noise"]
        dynamic["noise"] = {0: "batch"}
    # The TorchScript exporter: the torch.export-based one needs the extra onnxscript package. Its
    # tracer warns that the networks' input checks become constants, which is right for a padded input.
    with replacing(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, inputs, str(tmp), input_names=names, output_names=["restored"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path


def check_onnx(path: str | os.PathLike, net: DiffIRS2, lq: torch.Tensor, noise: torch.Tensor | None = None,
               seed: int | None = None) -> float:
    """Max |ONNX - PyTorch| on ``lq``; give ``noise`` for a noise-input export, ``seed`` for a baked one."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install onnxruntime "
                          "(or pip install 'diffir[onnx]')") from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"lq": lq.cpu().numpy().astype(np.float32)}
    if "noise" in {i.name for i in session.get_inputs()}:
        if noise is None:
            raise ValueError(f"{path} takes the initial noise as an input: pass noise=")
        feed["noise"] = noise.cpu().numpy().astype(np.float32)
    onnx_out = session.run(None, feed)[0]
    with torch.no_grad():
        reference = ExportableStageTwo(copy.deepcopy(net).cpu(), seed)
        torch_out = reference(lq.cpu(), None if seed is not None else noise).numpy()
    return float(np.abs(onnx_out - torch_out).max())
