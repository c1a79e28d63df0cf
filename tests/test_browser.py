"""The web page end to end: Debian's headless Chromium, driven by Playwright, against a real
uvicorn on loopback serving a real (tiny) checkpoint. Skipped only where Chromium is missing or
cannot start."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageStat

from harness.browser import CHROMIUM_ARGS, chromium_path
from harness.live_server import PLAIN_UVICORN, LiveServer

pytestmark = pytest.mark.browser

SEVEN = [(70, 60), (210, 60), (180, 130), (150, 200), (130, 250)]  # pad coordinates, 280x280


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium not found (apt-get install chromium, or run `make system-deps`)")
    with sync_api.sync_playwright() as pw:
        try:
            chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        except sync_api.Error as exc:
            pytest.skip(f"Chromium at {path} could not be launched: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(prior_checkpoint: Path) -> Iterator[str]:
    """`uvicorn app.main:app` in a subprocess on a free loopback port; yields its base URL. It
    serves the tiny checkpoint with a learned prior, so the digit picker has digits to offer."""
    with LiveServer(
        prior_checkpoint, command=PLAIN_UVICORN, ready=True, VAE_LOG_LEVEL="warning"
    ) as live:
        yield live.url + "/"


@dataclass
class Visit:
    page: object
    base: str
    requests: list[str] = field(default_factory=list)
    responses: list[object] = field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        """Requests to anything but the test server (data: and blob: URLs stay in the page)."""
        origin = urlsplit(self.base).netloc
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).netloc != origin
        ]

    def draw(self, points: list[tuple[float, float]]) -> None:
        box = self.page.locator("#pad").bounding_box()
        scale = box["width"] / 280
        xy = [(box["x"] + x * scale, box["y"] + y * scale) for x, y in points]
        self.page.mouse.move(*xy[0])
        self.page.mouse.down()
        for p in xy[1:]:
            self.page.mouse.move(*p, steps=4)
        self.page.mouse.up()


@pytest.fixture
def visit(browser, server: str) -> Iterator[Visit]:
    """A fresh page on the app, recording every request it makes."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    v = Visit(page=page, base=server)
    page.on("request", lambda request: v.requests.append(request.url))
    page.on("response", lambda response: v.responses.append(response))
    page.goto(server)
    page.wait_for_function("document.querySelectorAll('#end-a option').length > 1")
    yield v
    context.close()


def _png(data_url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix), data_url[:40]
    return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix) :])))


def test_drawing_shows_the_api_reconstruction_and_latents(visit: Visit) -> None:
    visit.draw(SEVEN)
    visit.page.locator("#recon-img:not([hidden])").wait_for()

    src = visit.page.get_attribute("#recon-img", "src")
    replies = [
        r.json() for r in visit.responses if r.url.endswith("/reconstruct") and r.status == 200
    ]
    shown = [body for body in replies if src == "data:image/png;base64," + body["reconstruction"]]
    assert shown, "the reconstruction on the page is not one the API returned"
    image = _png(src)
    assert image.size == (32, 32)
    assert ImageStat.Stat(image.convert("L")).var[0] > 0, "the reconstruction is blank"
    assert visit.page.get_attribute("#input-img", "src").endswith(shown[0]["input"])
    bars = visit.page.locator("#latent-chart rect.bar").count()
    assert bars == len(shown[0]["mu"])
    assert visit.foreign_requests() == []


def test_sample_shows_a_grid_and_same_seed_repeats_it(visit: Visit) -> None:
    page = visit.page
    page.fill("#n", "16")
    with page.expect_response("**/sample") as first:
        page.click("#sample-btn")
    page.wait_for_function("document.querySelector('#grid-img').naturalWidth > 0")
    size = page.eval_on_selector("#grid-img", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [4 * 34 + 2, 4 * 34 + 2]  # 4x4 tiles of 32 px, 2 px padding (make_grid)
    seed = first.value.headers["x-seed"]
    assert seed in page.inner_text("#grid-cap")

    with page.expect_response("**/sample") as again:
        page.click("#same-seed")
    assert page.input_value("#seed") == seed
    assert again.value.body() == first.value.body()
    assert visit.foreign_requests() == []


def test_the_digit_picker_asks_for_that_digit_and_gets_the_apis_bytes(visit: Visit) -> None:
    page = visit.page
    page.wait_for_function("!document.querySelector('#digit').disabled")
    page.fill("#n", "4")
    page.fill("#seed", "21")
    page.select_option("#digit", "7")
    with page.expect_response("**/sample") as reply:
        page.click("#sample-btn")
    sent = json.loads(reply.value.request.post_data)
    assert sent == {"n": 4, "temperature": 1, "digit": 7, "seed": 21}
    page.wait_for_function("document.querySelector('#grid-img').naturalWidth > 0")
    assert "of 7" in page.inner_text("#grid-cap")
    request = urllib.request.Request(
        visit.base + "sample",
        data=json.dumps(sent).encode(),
        headers={"Content-Type": "application/json"},
    )
    shown = page.evaluate(
        """async () => {
            const res = await fetch(document.querySelector('#grid-img').src);
            return Array.from(new Uint8Array(await res.arrayBuffer()));
        }"""
    )
    with urllib.request.urlopen(request) as direct:
        assert direct.read() == bytes(shown)  # the page shows the API's bytes for that request
    page.select_option("#digit", "")
    with page.expect_response("**/sample") as plain:
        page.click("#sample-btn")
    assert "digit" not in json.loads(plain.value.request.post_data)
    assert visit.foreign_requests() == []


def test_uploading_a_non_image_shows_the_api_error(visit: Visit) -> None:
    page = visit.page
    with page.expect_response("**/reconstruct") as reply:
        page.set_input_files(
            "#upload",
            files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}],
        )
    assert reply.value.status in (415, 422)
    detail = reply.value.json()["detail"]
    message = page.locator("#draw-msg.error")
    message.wait_for()
    assert detail in message.inner_text()
    assert page.get_attribute("#draw-msg", "aria-live") == "polite"
    assert visit.foreign_requests() == []


def test_interpolating_from_a_drawing_to_an_example_shows_a_strip(visit: Visit) -> None:
    page = visit.page
    visit.draw(SEVEN)
    page.locator("#use-a:not([disabled])").wait_for()
    page.click("#use-a")
    page.fill("#steps", "6")
    page.click("#interp-btn")
    page.wait_for_function("document.querySelectorAll('#strip img').length === 6")
    page.wait_for_function("[...document.querySelectorAll('#strip img')].every(i => i.complete)")
    assert (
        page.eval_on_selector_all("#strip img", "imgs => imgs.map(i => i.naturalWidth)") == [32] * 6
    )
    assert visit.foreign_requests() == []
