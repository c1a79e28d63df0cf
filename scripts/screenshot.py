"""Takes the web page's screenshot: draws a 3, samples sevens with the digit picker, saves a PNG.

    .venv/bin/python scripts/screenshot.py                      # serves models/mnist-vae.pt itself
    .venv/bin/python scripts/screenshot.py --url http://127.0.0.1:8000/
    .venv/bin/python scripts/screenshot.py --width 375 --out /tmp/phone.png

Needs Debian's Chromium (`apt-get install chromium`); Playwright drives it, downloads nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from harness.browser import CHROMIUM_ARGS, chromium_path
from harness.live_server import PLAIN_UVICORN, LiveServer

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def serve(checkpoint: Path) -> Iterator[str]:
    """`uvicorn app.main:app` on loopback serving `checkpoint`; yields its base URL once /readyz
    answers 200, and stops it afterwards."""
    with LiveServer(
        checkpoint, command=PLAIN_UVICORN, ready=True, VAE_LOG_LEVEL="warning"
    ) as server:
        yield server.url + "/"


def three(steps: int = 24) -> list[tuple[float, float]]:
    """A hand-drawn-looking 3 in the 280x280 pad's own coordinates: two bowls, one stroke."""
    upper = [(140 + 52 * math.cos(a), 92 + 46 * math.sin(a)) for a in _arc(200, 450, steps)]
    lower = [(140 + 60 * math.cos(a), 190 + 50 * math.sin(a)) for a in _arc(270, 520, steps)]
    return upper + lower


def _arc(start_deg: float, end_deg: float, steps: int) -> list[float]:
    return [math.radians(start_deg + (end_deg - start_deg) * i / steps) for i in range(steps + 1)]


def draw(page: Page, points: list[tuple[float, float]]) -> None:
    """Drags the mouse through `points` (pad coordinates) on the drawing pad."""
    box = page.locator("#pad").bounding_box()
    assert box is not None, "the drawing pad is not visible"
    sx, sy = box["width"] / 280, box["height"] / 280
    xy = [(box["x"] + x * sx, box["y"] + y * sy) for x, y in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for p in xy[1:]:
        page.mouse.move(*p, steps=2)
    page.mouse.up()


def take(base: str, out: Path, width: int) -> None:
    chromium = chromium_path()
    if chromium is None:
        raise SystemExit("Chromium not found: apt-get install chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page.goto(base)
        page.wait_for_function("document.querySelectorAll('#end-a option').length > 1")
        # /model has answered: the digit picker and the prior's note are filled in.
        note = "document.getElementById('prior-note').textContent"
        page.wait_for_function(f"!{note}.includes('every dimension')")
        draw(page, three())
        page.locator("#recon-img:not([hidden])").wait_for()
        page.select_option("#digit", "7")
        page.fill("#seed", "7")
        page.click("#sample-btn")
        page.locator("#grid-img:not([hidden])").wait_for()
        page.click("#use-a")
        page.click("#interp-btn")
        page.locator("#strip img").first.wait_for()
        page.wait_for_function(
            "[...document.images].filter(i => !i.hidden).every(i => i.complete && i.naturalWidth)"
        )
        page.evaluate("document.activeElement.blur()")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running server; default: start one on a free loopback port")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "mnist-vae.pt")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    p.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    args = p.parse_args(argv)
    if args.url:
        take(args.url.rstrip("/") + "/", args.out, args.width)
    else:
        with serve(args.checkpoint) as base:
            take(base, args.out, args.width)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
