"""``diffir-app``: a web page (Gradio) for restoring images with the zoo's models or any checkpoint.

    diffir-app                                   # bundled demo model, http://127.0.0.1:7860
    diffir-app -m realsr-gan-x4 -m realsr-l1-x4  # a choice of models (and a blend of the two)

Each upload is read with :mod:`diffir.image_io` (8/16-bit, gray, RGBA kept) and restored by a
:class:`diffir.Restorer` sharing the loaded network; the page shows a before/after slider (the input
upscaled with bicubic beside the result) and offers the full-resolution PNG. The same restoration is
the API endpoint ``/restore`` for ``gradio_client``. One restoration runs at a time per process (one
device); the others wait in a bounded queue.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image as PILImage

from .image_io import IMAGE_EXTENSIONS, hole_mask, is_image_file, read_image, read_mask, to_8bit, write_image
from .restorer import Restorer, mask_to_array
from .utils.precision import PRECISIONS
from .zoo import ZOO

DEFAULT_MODEL = "demo-sr-x4"
AUTO_TILE_MIN, AUTO_TILE_MAX = 128, 4096
# Peak memory of a DIRformer run per input pixel, in floats per channel of the network's base width
# (``dim``): measured 6.0 KB per input pixel for the demo x4 model (dim 16) on the CPU, i.e. ~94
# floats x dim; the x4 tail's 2x-upsampled features dominate.
FLOATS_PER_PIXEL_PER_DIM = 96
MEMORY_SHARE = 0.5  # of the free memory a tile may use (the rest: the model, the other tensors, headroom)
RESULTS_KEPT_S = 3600  # a request's files are deleted after an hour (gradio serves its own copies meanwhile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffir-app", description="Web page for restoring images with DiffIR.")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="MODEL",
                        help=f"zoo name or checkpoint file; repeat to offer a choice (default: {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also publish through a public gradio.live link")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--max-megapixels", type=float, default=4.0,
                        help="largest input image accepted, in megapixels (default: 4)")
    parser.add_argument("--queue-size", type=int, default=16,
                        help="requests that may wait for the device; more are refused with a message (default: 16)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)  # before gradio is imported: --help and mistakes answer at once
    if args.max_megapixels <= 0 or args.queue_size < 1:
        raise SystemExit("error: --max-megapixels must be positive and --queue-size at least 1")
    try:
        service = RestoreService.load(args.models or [DEFAULT_MODEL], args.device, args.max_megapixels)
    except Exception as err:  # noqa: BLE001  (missing model, bad checkpoint: one clear line)
        raise SystemExit(f"error: {err}") from None
    try:
        build_app(service, queue_size=args.queue_size).launch(
            server_name=args.host, server_port=args.port, share=args.share, max_file_size=service.max_file_bytes)
    finally:
        service.close()


# ----------------------------------------------------------------------------------- restoration (no gradio)
def available_memory(device: torch.device) -> int:
    """Free bytes where the network runs: CUDA's ``mem_get_info`` on a GPU, else the available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # Linux: MemAvailable counts the page cache the kernel can drop, unlike "free"
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_tile(net: torch.nn.Module, precision: str, free_bytes: int) -> int:
    """The tile side that fits ``MEMORY_SHARE`` of ``free_bytes``.

    ``tile = sqrt(MEMORY_SHARE * free_bytes / (FLOATS_PER_PIXEL_PER_DIM * dim * bytes_per_float))``,
    rounded down to the size multiple and kept within [AUTO_TILE_MIN, AUTO_TILE_MAX]; ``dim`` is the
    DIRformer's base width (its first convolution's output channels). Images smaller than the tile are
    restored whole.
    """
    dim = net.dim
    bytes_per_float = 4 if precision == "fp32" else 2
    side = math.sqrt(MEMORY_SHARE * free_bytes / (FLOATS_PER_PIXEL_PER_DIM * dim * bytes_per_float))
    side = int(min(max(side, AUTO_TILE_MIN), AUTO_TILE_MAX))
    return max(side - side % net.size_multiple, net.size_multiple)


def parse_tile(tile: str | int | None) -> str | int | None:
    """'auto', None (whole image: 'none', '' or 0) or a positive tile side."""
    text = str(tile).strip().lower() if tile is not None else "none"
    if text in ("auto", "none", "", "0"):
        return None if text != "auto" else "auto"
    if not text.isdigit():
        raise ValueError(f"tile must be 'auto', 'none' or a whole number of pixels, got {tile!r}")
    return int(text)


def safe_stem(name: str) -> str:
    """A file-name stem of letters, digits, '-', '_' and '.' only (uploads may be named anything)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem).strip("._")
    return stem[:80] or "image"


@dataclass
class Model:
    name: str  # what -m said: a zoo name or a checkpoint path
    restorer: Restorer

    @property
    def label(self) -> str:
        return f"{self.name} ({self.restorer.task}, x{self.restorer.scale})"

    @property
    def note(self) -> str:
        entry = ZOO.get(self.name)
        return entry.note if entry is not None else ""


@dataclass
class Result:
    before: Path  # 8-bit preview: the input upscaled with bicubic to the output size
    after: Path  # 8-bit preview of the result
    output: Path  # full-resolution PNG, in the input's bit depth and layout


class RestoreService:
    """The loaded models and what a request does with them; gradio-free (the page wraps it)."""

    def __init__(self, models: list[Model], max_megapixels: float, results_root: Path):
        self.models = {model.name: model for model in models}
        self.device = models[0].restorer.device
        self.max_megapixels = max_megapixels
        self.results_root = results_root
        self._blend_cache: tuple[tuple, Restorer] | None = None

    @classmethod
    def load(cls, names: Sequence[str], device: str = "auto", max_megapixels: float = 4.0) -> RestoreService:
        if len(set(names)) != len(names):
            raise ValueError(f"a model is given twice: {list(names)}")
        models = [Model(name, Restorer.from_pretrained(name, device=device)) for name in names]
        return cls(models, max_megapixels, Path(tempfile.mkdtemp(prefix="diffir-app-")))

    @property
    def max_file_bytes(self) -> int:
        """Upload limit: an uncompressed 16-bit RGBA image (8 bytes a pixel) of the largest size, + 1 MB."""
        return int(self.max_megapixels * 1e6 * 8) + (1 << 20)

    def model(self, name: str) -> Model:
        if name not in self.models:
            raise ValueError(f"no model {name!r} is loaded; loaded: {', '.join(self.models)}")
        return self.models[name]

    def blend_partners(self, name: str) -> list[str]:
        """The other loaded models of the same architecture (same weight names and shapes)."""
        shapes = _weight_shapes(self.model(name).restorer)
        return [other for other in self.models
                if other != name and _weight_shapes(self.models[other].restorer) == shapes]

    def scales(self, name: str) -> list[int]:
        """The scales among the loaded models that do the task of ``name``."""
        task = self.model(name).restorer.task
        return sorted({m.restorer.scale for m in self.models.values() if m.restorer.task == task})

    def model_for_scale(self, name: str, scale: int) -> str:
        """``name`` if it restores at ``scale``, else the first loaded model of its task that does."""
        task = self.model(name).restorer.task
        if self.models[name].restorer.scale == scale:
            return name
        return next(other for other, m in self.models.items() if m.restorer.task == task and m.restorer.scale == scale)

    def restorer(self, name: str, precision: str = "fp32", tile: str | int | None = None, tile_overlap: int = 32,
                 blend_with: str | None = None, blend: float = 0.0) -> Restorer:
        """A Restorer with this request's settings on the loaded network (or on a blend of two)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"{precision} is offered on GPUs only; this app runs on {self.device.type}")
        base = self.model(name).restorer
        net = base.net
        if blend_with:
            if blend_with not in self.blend_partners(name):
                raise ValueError(f"{blend_with!r} cannot be blended with {name!r}: "
                                 f"not a loaded model of the same architecture")
            net = self._blended(name, blend_with, float(blend)).net
        tile = parse_tile(tile)
        if tile == "auto":
            tile = auto_tile(net, precision, available_memory(self.device))
        return Restorer(net, device=self.device, precision=precision, tile=tile, tile_overlap=int(tile_overlap))

    def _blended(self, name: str, other: str, alpha: float) -> Restorer:
        """``Restorer.from_pretrained(name, model2=other, blend=alpha)``; the last blend is kept."""
        key = (name, other, alpha)
        if self._blend_cache is None or self._blend_cache[0] != key:
            self._blend_cache = None  # free the previous blend before building the next
            self._blend_cache = (key, Restorer.from_pretrained(name, model2=other, blend=alpha, device=self.device))
        return self._blend_cache[1]

    def read(self, path: str | Path, name: str | None = None) -> np.ndarray:
        """An uploaded image, refused when it is not an image file or larger than ``max_megapixels``."""
        name = name or Path(path).name
        if not is_image_file(name):
            raise ValueError(f"{name}: not a supported image file (use {', '.join(IMAGE_EXTENSIONS)})")
        try:  # the header alone gives the size, before anything is decoded
            with PILImage.open(path) as header:
                width, height = header.size
        except PILImage.DecompressionBombError:
            width = height = math.inf
        except Exception:  # noqa: BLE001  (not readable by PIL: read_image below names the problem)
            width = height = 0
        if width * height > self.max_megapixels * 1e6:
            raise ValueError(f"{name}: {width}x{height} is larger than this server's limit of "
                             f"{self.max_megapixels:g} megapixels; upload a smaller image")
        image = read_image(path)
        if image.shape[0] * image.shape[1] > self.max_megapixels * 1e6:
            raise ValueError(f"{name}: {image.shape[1]}x{image.shape[0]} is larger than this server's limit of "
                             f"{self.max_megapixels:g} megapixels; upload a smaller image")
        return image

    def new_request_dir(self) -> Path:
        """A fresh folder for one request's files; the folders of requests older than RESULTS_KEPT_S go."""
        cutoff = time.time() - RESULTS_KEPT_S
        for old in self.results_root.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.results_root))

    def restore_files(self, paths: Sequence[str | Path], restorer: Restorer, seed: int | None,
                      mask: Callable[[np.ndarray, str], np.ndarray | None] = lambda image, name: None,
                      progress: Callable[[int, int, int, int], None] | None = None) -> list[Result]:
        """Restore each file; ``mask(image, name)`` gives its mask (asked for inpainting models only),
        ``progress(image, images, done, total)`` is called after each tile. A bad file or mask stops the
        request with a ValueError naming the file, before any restoration has run."""
        jobs = []
        for path in paths:
            name = Path(path).name
            image = self.read(path)
            image_mask = None
            if restorer.task == "inpaint":
                try:
                    image_mask = mask(image, name)
                    if image_mask is None:
                        raise ValueError("the model inpaints: paint the holes or upload a mask (white = hole)")
                    mask_to_array(image_mask, image.shape[:2])
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from err
            jobs.append((image, image_mask, name))
        folder = self.new_request_dir()
        results, taken = [], set()
        for index, (image, image_mask, name) in enumerate(jobs):
            tiles = None if progress is None else (lambda done, total, i=index: progress(i, len(jobs), done, total))
            restored = restorer.restore(image, mask=image_mask, seed=seed, progress=tiles)
            stem = safe_stem(name)
            while stem in taken:
                stem += "_"
            taken.add(stem)
            before = cv2.resize(image, (restored.shape[1], restored.shape[0]), interpolation=cv2.INTER_CUBIC)
            output = folder / f"{stem}_x{restorer.scale}.png"
            write_image(output, restored)
            # the slider shows 8-bit previews; an 8-bit result is its own preview
            result = Result(folder / f"{stem}_before.png", output if restored.dtype == np.uint8
                            else folder / f"{stem}_after.png", output)
            write_image(result.before, to_8bit(before))
            if result.after != output:
                write_image(result.after, to_8bit(restored))
            results.append(result)
        return results

    def close(self) -> None:
        shutil.rmtree(self.results_root, ignore_errors=True)


def _weight_shapes(restorer: Restorer) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in restorer.net.state_dict().items()}


def drawn_mask(editor: dict | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Holes painted in a gr.ImageEditor (any brush stroke of any layer), at the image's size; None if
    nothing is painted. The editor may hold the image scaled, so strokes of the image's aspect ratio
    are scaled to it; others are refused."""
    if not editor or not editor.get("layers"):
        return None
    strokes = np.zeros(editor["layers"][0].shape[:2], dtype=bool)
    for layer in editor["layers"]:
        if layer.shape[:2] == strokes.shape:
            strokes |= layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else hole_mask(layer)
    if not strokes.any():
        return None
    if strokes.shape != tuple(shape):
        if abs(strokes.shape[0] * shape[1] - strokes.shape[1] * shape[0]) > 0.01 * strokes.shape[0] * shape[1]:
            raise ValueError(f"the holes were painted on a {strokes.shape[1]}x{strokes.shape[0]} picture, not on this "
                             f"{shape[1]}x{shape[0]} image: restore images of other sizes one at a time")
        strokes = cv2.resize(strokes.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return strokes


# ----------------------------------------------------------------------------------- the page
def build_app(service: RestoreService, queue_size: int = 16):
    """The Gradio Blocks of the page and of the ``/restore`` API endpoint (queued, one run at a time)."""
    import gradio as gr

    names = list(service.models)
    first = service.model(names[0])
    on_gpu = service.device.type == "cuda"

    def model_info(name: str) -> str:
        model = service.model(name)
        return f"**{model.label}**" + (f": {model.note}" if model.note else "")

    def settings_for(name: str):
        """The controls that depend on the chosen model: scale, blend, mask, description."""
        model, partners, scales = service.model(name), service.blend_partners(name), service.scales(name)
        return (gr.update(choices=scales, value=model.restorer.scale, visible=len(scales) > 1),
                gr.update(visible=bool(partners)),
                gr.update(choices=["(none)", *partners], value="(none)"),
                gr.update(visible=model.restorer.task == "inpaint"),
                model_info(name))

    def run(paths, name, seed, tile, tile_overlap, precision, blend_with, blend, mask_of, progress) -> list[Result]:
        if not paths:
            raise gr.Error("Upload an image first.")
        blend_with = None if blend_with in (None, "", "(none)") else blend_with
        seed = None if seed is None or int(seed) < 0 else int(seed)

        def tiles(index, count, done, total):
            progress(done / total, desc=f"image {index + 1}/{count}: tile {done}/{total}")

        try:
            restorer = service.restorer(name, precision or "fp32", tile, tile_overlap, blend_with, blend)
            return service.restore_files(paths, restorer, seed, mask_of, tiles)
        except (ValueError, OSError) as err:  # bad upload, bad setting: shown on the page, the app keeps serving
            raise gr.Error(str(err), print_exception=False) from err
        except torch.OutOfMemoryError as err:
            raise gr.Error("out of memory: choose a smaller tile size (or 'auto')") from err
        except RuntimeError as err:
            raise gr.Error(f"restoration failed: {err}") from err

    def mask_source(mask_file, editor):
        """``mask(image, name)`` for restore_files: the uploaded mask file, else the painted strokes."""
        def mask(image, name):
            if mask_file:
                return read_mask(mask_file)
            return drawn_mask(editor, image.shape[:2])
        return mask

    def restore_page(files, name, seed, tile, tile_overlap, precision, blend_with, blend, mask_file, editor,
                     progress=gr.Progress()):  # noqa: B008  (how gradio passes a progress bar)
        start = time.perf_counter()
        results = run(files or [], name, seed, tile, tile_overlap, precision, blend_with, blend,
                      mask_source(mask_file, editor), progress)
        seconds = time.perf_counter() - start
        status = (f"Restored {len(results)} image{'s' * (len(results) > 1)} in {seconds:.1f} s on "
                  f"{service.device} ({precision if on_gpu else 'fp32'}) with {name}.")
        shown = [r.output.name for r in results]
        return ((str(results[0].before), str(results[0].after)),
                [str(r.output) for r in results],
                status,
                gr.update(choices=shown, value=shown[0], visible=len(shown) > 1),
                [(str(r.before), str(r.after), r.output.name) for r in results])

    def show(choice, shown):
        for before, after, output_name in shown or []:
            if output_name == choice:
                return before, after
        return gr.update()

    def restore_api(image, model=names[0], seed=0, tile="auto", tile_overlap=32, precision="fp32", blend_with="",
                    blend=0.0, mask=None,
                    progress=gr.Progress()):  # noqa: B008  (how gradio passes a progress bar)
        results = run([image], model, seed, tile, tile_overlap, precision, blend_with, blend,
                      lambda img, name: read_mask(mask) if mask else None, progress)
        return str(results[0].output)

    def preview_for_editor(files, name):
        """Put the first upload under the brush when the model inpaints."""
        if not files or service.model(name).restorer.task != "inpaint":
            return gr.update()
        try:
            return to_8bit(read_image(files[0]))
        except ValueError:
            return gr.update()  # reported when restoring

    with gr.Blocks(title="DiffIR image restoration", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# DiffIR image restoration\nUpload images, choose a model, press **Restore**. "
                    f"Images up to {service.max_megapixels:g} megapixels; restorations run one at a time "
                    f"on {service.device}, at most {queue_size} requests wait (more are told the app is busy).")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Images (drag and drop one or several)", file_count="multiple",
                                file_types=list(IMAGE_EXTENSIONS), elem_id="images")
                model = gr.Dropdown([(service.model(n).label, n) for n in names], value=names[0], label="Model",
                                    elem_id="model", interactive=len(names) > 1)
                info = gr.Markdown(model_info(names[0]))
                scale = gr.Radio(service.scales(names[0]), value=first.restorer.scale, label="Scale",
                                 visible=len(service.scales(names[0])) > 1)
                with gr.Group(visible=bool(service.blend_partners(names[0]))) as blend_group:
                    blend_with = gr.Dropdown(["(none)", *service.blend_partners(names[0])], value="(none)",
                                             label="Blend with (same architecture)")
                    blend = gr.Slider(0, 1, value=0.5, step=0.05, label="Blend: 0 = this model (fidelity), "
                                                                        "1 = the other (perception)")
                with gr.Group(visible=first.restorer.task == "inpaint") as mask_group:
                    editor = gr.ImageEditor(label="Paint the holes (first image)", type="numpy", transforms=(),
                                            elem_id="editor", sources=("upload",), layers=False,
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                    mask_file = gr.File(label="...or upload a mask (white = hole, the image's size)",
                                        file_types=list(IMAGE_EXTENSIONS))
                with gr.Accordion("Settings", open=False):
                    seed = gr.Number(0, precision=0, label="Seed (-1 = random)")
                    tile = gr.Dropdown(["auto", "none", "128", "256", "512", "1024"], value="auto",
                                       allow_custom_value=True, label="Tile size (input pixels)",
                                       info="auto: from the free memory; none: the whole image at once")
                    tile_overlap = gr.Slider(0, 128, value=32, step=8, label="Tile overlap (pixels)")
                    precision = gr.Radio(list(PRECISIONS), value="fp32", label="Precision", visible=on_gpu)
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column():
                comparison = gr.ImageSlider(label="Before (the input, bicubic to the output size) / after",
                                            type="filepath", format="png", elem_id="comparison")
                shown_image = gr.Dropdown(label="Show", visible=False)
                downloads = gr.File(label="Download (full resolution PNG)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                status = gr.Markdown(elem_id="status")
        shown = gr.State([])

        model.change(settings_for, model, [scale, blend_group, blend_with, mask_group, info],
                     api_visibility="private")
        scale.input(lambda name, s: service.model_for_scale(name, s), [model, scale], model, api_visibility="private")
        for event in (files.upload, model.change):  # the first image goes under the brush
            event(preview_for_editor, [files, model], editor, api_visibility="private")
        button.click(restore_page,
                     [files, model, seed, tile, tile_overlap, precision, blend_with, blend, mask_file, editor],
                     [comparison, downloads, status, shown_image, shown],
                     api_visibility="private", concurrency_limit=1, concurrency_id="device")
        shown_image.change(show, [shown_image, shown], comparison, api_visibility="private")

        # the API endpoint: the same restoration on one image, its parameters as hidden components
        with gr.Column(visible=False):
            api_inputs = [gr.File(label="image", file_types=list(IMAGE_EXTENSIONS)),
                          gr.Dropdown(names, value=names[0], label="model"),
                          gr.Number(0, precision=0, label="seed"),
                          gr.Textbox("auto", label="tile"),
                          gr.Number(32, precision=0, label="tile_overlap"),
                          gr.Dropdown(list(PRECISIONS), value="fp32", label="precision"),
                          gr.Textbox("", label="blend_with"),
                          gr.Number(0.0, label="blend"),
                          gr.File(label="mask", file_types=list(IMAGE_EXTENSIONS))]
            api_output = gr.File(label="restored")
            api_button = gr.Button()
        api_button.click(restore_api, api_inputs, api_output, api_name="restore",
                         api_description="Restore one image; returns the full-resolution PNG.",
                         concurrency_limit=1, concurrency_id="device")
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app
