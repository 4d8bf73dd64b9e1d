"""diffir-app: the page in a real (headless Chromium) browser, the /restore API through gradio_client,
and the request handling behind them (limits, masks, blends, progress)."""
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import diffir.app
from diffir import DiffIRS2, Restorer
from diffir.app import RestoreService, build_app, drawn_mask
from diffir.image_io import read_image, write_image

REPO = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
MAX_MEGAPIXELS = 0.01  # 10,000 pixels: small test images pass, a 120x100 one does not
TINY = {"n_encoder_res": 1, "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "heads": [1, 1, 1, 1]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_crop(path: Path, top: int, left: int, height: int, width: int) -> Path:
    """A crop of a bundled photo, saved as PNG."""
    image = read_image(REPO / "demo_data" / "val" / "spaniels_window.png")
    write_image(path, image[top:top + height, left:left + width])
    return path


def tiny_checkpoint(path: Path, seed: int, **kwargs) -> Path:
    torch.manual_seed(seed)
    torch.save({"params_ema": DiffIRS2(**{**TINY, **kwargs}).state_dict()}, path)
    return path


def reference(path: Path, seed: int = 0) -> np.ndarray:
    return Restorer.from_pretrained("demo-sr-x4").restore(read_image(path), seed=seed)


@pytest.fixture(scope="module")
def service():
    service = RestoreService.load(["demo-sr-x4"], device="cpu", max_megapixels=MAX_MEGAPIXELS)
    yield service
    service.close()


def launch(service, queue_size):
    app = build_app(service, queue_size=queue_size)
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    return app, url


@pytest.fixture(scope="module")
def app_url(service):
    app, url = launch(service, queue_size=8)
    yield url
    app.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
                    "apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    # Chromium's profile and its socket folders go to a pytest temporary folder, not left in /tmp
    scratch = tmp_path_factory.mktemp("chromium")
    options.add_argument(f"--user-data-dir={scratch / 'profile'}")
    service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


class Page:
    """The app's page in the browser: upload, restore, read what it shows."""

    def __init__(self, driver, url):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by, self.wait = driver, By, WebDriverWait(driver, 30)
        driver.get(url)
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#images input[type=file]"))

    def upload(self, path: Path) -> None:
        self.driver.find_element(self.by.CSS_SELECTOR, "#images input[type=file]").send_keys(str(path))
        self.wait.until(lambda d: d.find_elements(self.by.CSS_SELECTOR, f"#images td[aria-label='{path.name}']"))

    def clear_uploads(self) -> None:
        self.driver.find_element(self.by.CSS_SELECTOR, "#images button[aria-label='Clear']").click()
        self.wait.until(lambda d: d.find_elements(self.by.CSS_SELECTOR, "#images input[type=file]"))

    def restore(self) -> None:
        self.driver.find_element(self.by.ID, "restore").click()

    def download_links(self, name: str) -> list[str]:
        """The hrefs of the download list once it offers ``name``."""
        css = f"#downloads a[download='{name}']"
        self.wait.until(lambda d: d.find_elements(self.by.CSS_SELECTOR, css))
        return [a.get_attribute("href") for a in self.driver.find_elements(self.by.CSS_SELECTOR, "#downloads a[href]")]

    def slider_image_widths(self) -> list[int]:
        """naturalWidth of each loaded image of the before/after slider."""
        script = "return Array.from(arguments[0].querySelectorAll('img')).map(i => i.complete ? i.naturalWidth : 0)"
        slider = self.driver.find_element(self.by.ID, "comparison")
        self.wait.until(lambda d: len([w for w in d.execute_script(script, slider) if w]) >= 2)
        return self.driver.execute_script(script, slider)

    def paint_stroke(self) -> None:
        """Pick the editor's brush and draw a short stroke around the middle of the picture."""
        from selenium.webdriver.common.action_chains import ActionChains

        self.driver.find_element(self.by.CSS_SELECTOR, "#editor button[aria-label='Brush']").click()
        canvas = next(c for c in self.driver.find_elements(self.by.CSS_SELECTOR, "#editor canvas")
                      if c.size["width"] > 100)
        ActionChains(self.driver).move_to_element_with_offset(canvas, -20, 0).click_and_hold() \
            .move_by_offset(20, 5).move_by_offset(20, 5).release().perform()

    def wait_for_text(self, text: str) -> None:
        self.wait.until(lambda d: text in d.find_element(self.by.TAG_NAME, "body").text)


def fetch_image(url: str, tmp_path: Path) -> np.ndarray:
    target = tmp_path / "downloaded.png"
    with urllib.request.urlopen(url, timeout=30) as response:
        target.write_bytes(response.read())
    return read_image(target)


def test_page_restores_an_upload_with_slider_and_download(browser, app_url, tmp_path):
    source = photo_crop(tmp_path / "spaniel.png", 100, 100, 48, 64)
    page = Page(browser, app_url)
    page.upload(source)
    page.restore()
    (link,) = page.download_links("spaniel_x4.png")
    assert page.slider_image_widths() == [256, 256]  # before (bicubic) and after, both at 4x
    restored = fetch_image(link, tmp_path)
    assert restored.shape == (192, 256, 3) and restored.dtype == np.uint8
    np.testing.assert_array_equal(restored, reference(source))
    page.wait_for_text("on cpu")  # the time taken and the device


def test_page_reports_a_corrupt_upload_and_keeps_serving(browser, app_url, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    page = Page(browser, app_url)
    page.upload(broken)
    page.restore()
    page.wait_for_text("broken.png: not a decodable image")
    page.clear_uploads()
    good = photo_crop(tmp_path / "window.png", 20, 200, 40, 56)
    page.upload(good)
    page.restore()
    (link,) = page.download_links("window_x4.png")
    np.testing.assert_array_equal(fetch_image(link, tmp_path), reference(good))


def test_page_inpaints_holes_painted_with_the_brush(browser, tmp_path):
    model = str(tiny_checkpoint(tmp_path / "inpaint.pth", 0, inp_channels=4, scale=None))
    service = RestoreService.load([model], device="cpu")
    app, url = launch(service, queue_size=4)
    try:
        source = photo_crop(tmp_path / "meadow.png", 0, 0, 60, 80)
        page = Page(browser, url)
        page.upload(source)
        page.wait.until(lambda d: d.find_elements(page.by.CSS_SELECTOR, "#editor canvas"))
        page.paint_stroke()
        page.restore()
        (link,) = page.download_links("meadow_x1.png")
        changed = np.any(fetch_image(link, tmp_path) != read_image(source), axis=2)
        assert changed[20:40, 30:50].any()  # the painted holes were filled in
        assert not changed[:, :5].any() and not changed[:, -5:].any()  # unpainted pixels are kept
    finally:
        app.close()
        service.close()


def test_api_restore_endpoint_returns_the_full_resolution_png(app_url, tmp_path):
    source = photo_crop(tmp_path / "api.png", 60, 150, 40, 48)
    client = Client(app_url, verbose=False)
    result = client.predict(handle_file(str(source)), seed=3, tile="none", api_name="/restore")
    restored = read_image(result)
    assert Path(result).suffix == ".png" and restored.shape == (160, 192, 3)
    np.testing.assert_array_equal(restored, reference(source, seed=3))

    deep_gray = tmp_path / "deep_gray.png"  # 16-bit grayscale stays 16-bit grayscale
    write_image(deep_gray, (read_image(source).mean(axis=2) * 257).astype(np.uint16))
    restored = read_image(client.predict(handle_file(str(deep_gray)), tile="none", api_name="/restore"))
    assert restored.dtype == np.uint16 and restored.shape == (160, 192)
    np.testing.assert_array_equal(restored, reference(deep_gray))


def test_api_reports_bad_input_by_name(app_url, tmp_path):
    client = Client(app_url, verbose=False)
    big = photo_crop(tmp_path / "big.png", 0, 0, 100, 120)  # 12,000 pixels > MAX_MEGAPIXELS
    with pytest.raises(AppError, match=r"big.png: 120x100 is larger than this server's limit of 0.01 megapixels"):
        client.predict(handle_file(str(big)), api_name="/restore")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(AppError, match="Invalid file type"):
        client.predict(handle_file(str(text)), api_name="/restore")
    with pytest.raises(AppError, match="fp16 is offered on GPUs only"):
        client.predict(handle_file(str(photo_crop(tmp_path / "a.png", 0, 0, 16, 16))), precision="fp16",
                       api_name="/restore")


def test_full_queue_refuses_with_a_message(service, tmp_path):
    app, url = launch(service, queue_size=1)
    try:
        source = photo_crop(tmp_path / "slow.png", 0, 0, 96, 96)
        client = Client(url, verbose=False)
        # small tiles make each run slow enough that the later requests find the device busy
        jobs = [client.submit(handle_file(str(source)), tile="32", tile_overlap=8, api_name="/restore")
                for _ in range(4)]
        outcomes = []
        for job in jobs:
            try:
                outcomes.append(Path(job.result(timeout=120)).suffix)
            except Exception as err:  # noqa: BLE001  (the refusal's type is the client's business; its text is ours)
                outcomes.append(str(err))
        assert ".png" in outcomes
        assert any("Queue is full" in outcome for outcome in outcomes), outcomes
    finally:
        app.close()


def test_inpainting_mask_uploaded_or_painted(tmp_path):
    model = str(tiny_checkpoint(tmp_path / "inpaint.pth", 0, inp_channels=4, scale=None))
    service = RestoreService.load([model], device="cpu")
    try:
        image_path = photo_crop(tmp_path / "face.png", 0, 0, 24, 32)
        image = read_image(image_path)
        holes = np.zeros((24, 32), bool)
        holes[8:16, 10:20] = True
        restorer = service.restorer(model, tile="none")
        expected = Restorer.from_pretrained(model).restore(image, holes, seed=1)

        uploaded = service.restore_files([image_path], restorer, 1, lambda img, name: holes)
        np.testing.assert_array_equal(read_image(uploaded[0].output), expected)

        # a brush stroke on an editor showing the image at twice its size
        layer = np.zeros((48, 64, 4), np.uint8)
        layer[16:32, 20:40] = 255
        painted = drawn_mask({"background": None, "layers": [layer], "composite": None}, image.shape[:2])
        np.testing.assert_array_equal(painted, holes)
        with pytest.raises(ValueError, match="painted on a 64x64 picture, not on this 32x24 image"):
            drawn_mask({"background": None, "layers": [np.full((64, 64, 4), 255, np.uint8)], "composite": None},
                       image.shape[:2])

        with pytest.raises(ValueError, match="face.png: the mask is 10x10 but the image is 24x32"):
            service.restore_files([image_path], restorer, 1, lambda img, name: np.ones((10, 10), bool))
        with pytest.raises(ValueError, match="face.png: the model inpaints: paint the holes or upload a mask"):
            service.restore_files([image_path], restorer, 1)
    finally:
        service.close()


def test_blend_scales_and_tile_progress(tmp_path):
    first = str(tiny_checkpoint(tmp_path / "fidelity.pth", 0, scale=4))
    second = str(tiny_checkpoint(tmp_path / "perception.pth", 1, scale=4))
    other_scale = str(tiny_checkpoint(tmp_path / "x2.pth", 2, scale=2))
    service = RestoreService.load([first, second, other_scale], device="cpu")
    try:
        assert service.blend_partners(first) == [second]
        assert service.scales(first) == [2, 4] and service.model_for_scale(first, 2) == other_scale
        image_path = photo_crop(tmp_path / "tiles.png", 0, 0, 40, 40)
        calls = []
        restorer = service.restorer(first, tile="32", tile_overlap=8, blend_with=second, blend=0.3)
        (result,) = service.restore_files([image_path], restorer, 0,
                                          progress=lambda *call: calls.append(call))
        assert calls == [(0, 1, done, 4) for done in range(1, 5)]  # image 0 of 1, after each of 2x2 tiles
        blended = Restorer.from_pretrained(first, model2=second, blend=0.3, tile=32, tile_overlap=8)
        np.testing.assert_array_equal(read_image(result.output), blended.restore(read_image(image_path), seed=0))
    finally:
        service.close()


def test_auto_tile_follows_the_free_memory(tmp_path, monkeypatch):
    model = str(tiny_checkpoint(tmp_path / "x4.pth", 0, scale=4))
    service = RestoreService.load([model], device="cpu")
    try:
        image_path = photo_crop(tmp_path / "wide.png", 0, 0, 60, 150)
        for free_bytes, tiles in ((0, 2), (1 << 40, 1)):  # smallest tile (128: two tiles across), the whole image
            monkeypatch.setattr(diffir.app, "available_memory", lambda device, free=free_bytes: free)
            calls = []
            restorer = service.restorer(model, tile="auto", tile_overlap=32)
            service.restore_files([image_path], restorer, 0, progress=lambda *call, calls=calls: calls.append(call))
            assert restorer.tile % restorer.size_multiple == 0 and calls[-1] == (0, 1, tiles, tiles)
    finally:
        service.close()


def test_help_answers_without_importing_gradio():
    script = ("import sys\nfrom diffir.app import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "assert 'gradio' not in sys.modules, 'gradio imported for --help'")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "--max-megapixels" in run.stdout and "--share" in run.stdout

