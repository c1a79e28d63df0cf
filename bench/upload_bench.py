"""`/reconstruct` latency for a 640x480 JPEG photo, before and after issue 13, side by side.

    python bench/upload_bench.py [--rounds 40] [--before eb9a3a9] [--json out.json]

"Before" is the normaliser as of commit `--before` (`app/images/normalise.py`, or
`app/imaging.py` before the move), read with `git show` into a temporary module; "after" is the
working tree's. The service runs in-process (FastAPI's TestClient, the shipped checkpoint) and
the upload dependency looks `normalize` up at call time, so each round swaps the function in and
posts the same photo to both, interleaved, and the ratio of medians compares them under the
same load. Rows: the
whole request, and `normalize_upload` alone, for a clean page, a shadow over a third of it and a
page edge with the desk (the "before" code answers those two wrongly, but no slower).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from app.config import Settings  # noqa: E402
from app.images import normalise  # noqa: E402
from app.main import create_app  # noqa: E402
from app.routes import deps  # noqa: E402
from harness import photo_scenes  # noqa: E402
from training.data import load_split  # noqa: E402

BEFORE = "eb9a3a9"  # main just before issue 13's first commit


def load_before(commit: str):
    """The normaliser at `commit`, imported as a module of its own."""
    for path in ("app/images/normalise.py", "app/imaging.py"):
        shown = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"], capture_output=True, text=True
        )
        if shown.returncode == 0:
            break
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / "imaging_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("imaging_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _on_opened(module):
    """`module`'s normaliser for an image `open_upload` opened (older ones take bytes)."""
    if hasattr(module, "normalize"):
        return module.normalize
    return lambda image, preprocess: module.normalize_upload(
        image.fp.getvalue(), preprocess=preprocess
    )


def photos() -> dict[str, bytes]:
    digit = load_split(REPO / "data", "mnist", train=False).images[0].numpy()
    return {
        "clean page": photo_scenes.clean_page(digit, seed=0),
        "shadow over a third": photo_scenes.shadow_band(digit, "left", seed=0),
        "page edge and desk": photo_scenes.page_edge(digit, "right", seed=0),
    }


def post(client: TestClient, files: dict) -> None:
    client.post("/reconstruct", files=files).raise_for_status()


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--before", default=BEFORE, help="commit of the old normaliser")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    before = load_before(args.before)
    versions = {"before": before.normalize_upload, "after": normalise.normalize_upload}
    # What the upload dependency calls with the opened image, per version.
    in_route = {"before": _on_opened(before), "after": normalise.normalize}
    settings = Settings(checkpoint=args.checkpoint, device="cpu", api_key=None, admin_token=None)
    rows = []
    with TestClient(create_app(settings)) as client:
        for name, jpeg in photos().items():
            assert len(jpeg) < 200_000
            files = {"file": ("photo.jpg", jpeg, "image/jpeg")}
            times: dict[str, dict[str, list[float]]] = {
                v: {"request": [], "normalise": []} for v in versions
            }
            for round_ in range(args.rounds + 3):  # three rounds of warm-up
                for version, normalize_upload in versions.items():
                    deps.normalize = in_route[version]
                    request = timed(functools.partial(post, client, files))
                    alone = timed(functools.partial(normalize_upload, jpeg))
                    if round_ >= 3:
                        times[version]["request"].append(request)
                        times[version]["normalise"].append(alone)
            deps.normalize = normalise.normalize
            for what in ("request", "normalise"):
                before = statistics.median(times["before"][what]) * 1e3
                after = statistics.median(times["after"][what]) * 1e3
                rows.append(
                    {
                        "photo": name,
                        "timed": what,
                        "before_ms": before,
                        "after_ms": after,
                        "ratio": after / before,
                    }
                )

    cpu = platform.processor() or platform.machine()
    print(f"640x480 JPEG, {args.rounds} rounds each, medians; {cpu}")
    print(f"{'photo':22s} {'timed':17s} {'before ms':>10s} {'after ms':>10s} {'after/before':>13s}")
    for row in rows:
        timed_what = "/reconstruct" if row["timed"] == "request" else "normalize_upload"
        ms = f"{row['before_ms']:10.1f} {row['after_ms']:10.1f}"
        print(f"{row['photo']:22s} {timed_what:17s} {ms} {row['ratio']:13.2f}")
    worst = max(r["ratio"] for r in rows if r["timed"] == "request")
    print(f"worst /reconstruct ratio: {worst:.2f} (target: at most 1.20)")
    if args.json:
        args.json.write_text(
            json.dumps({"rounds": args.rounds, "before": args.before, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
