"""The hand-written PNG writer (`app.images.png.grey_png`) beside Pillow's `save`, same pixels.

    python bench/png_bench.py

Both write an 8-bit greyscale PNG with zlib level 6 and no filter, so the bytes decode to the same
image; the difference is Pillow's per-image plugin machinery, paid on the event loop of every image
response. Prints microseconds per image and the difference as a share of a `/sample` request at the
given `--request-ms` (the p50 of `bench/peers_bench.py`'s c=1 cell).
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
import timeit
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.images.png import grey_png  # noqa: E402


def pillow_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--request-ms", type=float, default=1.2)
    p.add_argument("--number", type=int, default=2000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'image':>12s} {'hand us':>9s} {'Pillow us':>10s} {'saved, % of a request':>22s}")
    for side in (32, 138):  # one digit; the 4x4 grid of `{"n": 16}`
        pixels = (rng.random((side, side)) ** 4 * 255).astype(np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(grey_png(pixels))))
        assert (decoded == pixels).all()  # the same image either way
        hand = min(timeit.repeat(functools.partial(grey_png, pixels), number=args.number, repeat=5))
        pil = min(
            timeit.repeat(functools.partial(pillow_png, pixels), number=args.number, repeat=5)
        )
        hand_us, pil_us = hand / args.number * 1e6, pil / args.number * 1e6
        share = (pil_us - hand_us) / (args.request_ms * 1000) * 100
        print(f"{side}x{side:<9d} {hand_us:9.1f} {pil_us:10.1f} {share:21.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
