"""Issue 30's cost: /reconstruct and /encode with and without the typicality score, in one run.

    taskset -c 0 python bench/typicality_cost.py [--rounds 200] [--concurrency 8] [--json out.json]

One app in this process (FastAPI's TestClient for one request at a time, httpx over ASGI for
`--concurrency` at once), serving the shipped checkpoint with the digit guide, as `vae-serve`
does. "with" is the model as loaded, its calibration scoring every encode and reconstruct (the
three latent terms and the guide's confidence); "without" is the same loaded model with the
calibration taken off (`typicality=None`: the answer then carries no score, as for a checkpoint
from before issue 30). The two are swapped in before each request (or burst), interleaved, so
both see the same load; the ratio of medians compares them. The upload is a 28x28 MNIST digit,
the cheapest there is, where the score is the largest share of a request. The last rows time the
score alone (`Typicality.score` on a batch, the guide's pass included) per row.

Pinned to one core (`taskset -c 0`), the client, the event loop and the inference thread share
it, as on a one-core server (lone rows then run on the event loop); on a shared machine run it
two or three times and report every ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402

ROUTES = ("/reconstruct?format=json", "/reconstruct", "/encode")


def one_at_a_time(client: TestClient, engine, models: dict, files: dict, rounds: int) -> dict:
    times = {(route, v): [] for route in ROUTES for v in models}
    for round_ in range(rounds + 10):  # ten rounds of warm-up
        for route in ROUTES:
            for version, model in models.items():
                engine._current = model
                start = time.perf_counter()
                client.post(route, files=files).raise_for_status()
                if round_ >= 10:
                    times[(route, version)].append(time.perf_counter() - start)
    return times


async def bursts(app, engine, models: dict, files: dict, rounds: int, concurrency: int) -> dict:
    times = {(route, v): [] for route in ROUTES for v in models}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def post(route: str) -> None:
            (await client.post(route, files=files)).raise_for_status()

        for round_ in range(rounds // 4 + 5):
            for route in ROUTES:
                for version, model in models.items():
                    engine._current = model
                    start = time.perf_counter()
                    await asyncio.gather(*(post(route) for _ in range(concurrency)))
                    if round_ >= 5:
                        times[(route, version)].append(time.perf_counter() - start)
    return times


def score_alone(model) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for n in (1, 8, 64):
        x = rng.random((n, 1, 32, 32), dtype=np.float32)
        mu, logvar = model.runner.encode(x)
        for _ in range(5):
            model.typicality.score(x, mu, logvar)
        runs = []
        for _ in range(50):
            start = time.perf_counter()
            model.typicality.score(x, mu, logvar)
            runs.append(time.perf_counter() - start)
        encode = []
        for _ in range(20):
            start = time.perf_counter()
            model.runner.encode(x)
            encode.append(time.perf_counter() - start)
        rows.append(
            {
                "batch": n,
                "score_us_per_row": statistics.median(runs) / n * 1e6,
                "encode_us_per_row": statistics.median(encode) / n * 1e6,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--digit-guide", default=None, help="VAE_DIGIT_GUIDE ('' scores without the guide)"
    )
    args = p.parse_args(argv)
    digit = (REPO / "app" / "images" / "example_digits" / "7-0.png").read_bytes()
    files = {"file": ("7.png", digit, "image/png")}
    # what is measured is the score's cost, not admission control: a burst on one busy core must
    # be served, not refused with 503 once the light lane holds more than 60 ms of work
    settings = Settings(
        checkpoint=args.checkpoint,
        device="cpu",
        api_key=None,
        admin_token=None,
        light_queue_ms=10_000,
        **({} if args.digit_guide is None else {"digit_guide": args.digit_guide}),
    )
    app = create_app(settings)
    results = []
    with TestClient(app) as client:
        engine = app.state.engine
        scored = engine.current
        if scored.typicality is None:
            print(f"{args.checkpoint} has no typicality calibration (vae-calibrate-typicality)")
            return 2
        models = {"without": dataclasses.replace(scored, typicality=None), "with": scored}
        load_before = os.getloadavg()[0]
        measured = {"c=1": one_at_a_time(client, engine, models, files, args.rounds)}
        measured[f"c={args.concurrency}"] = client.portal.call(
            bursts, app, engine, models, files, args.rounds, args.concurrency
        )
        engine._current = scored
        alone = score_alone(scored)
    terms = ", ".join(scored.typicality.served_terms)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"28x28 PNG upload, medians; {platform.processor() or platform.machine()}, CPUs {cpus}")
    load_after = os.getloadavg()[0]
    print(f"score terms: {terms}; load average {load_before:.2f} before, {load_after:.2f} after")
    print(f"{'load':6s} {'route':26s} {'without ms':>11s} {'with ms':>9s} {'with/without':>13s}")
    for load, times in measured.items():
        for route in ROUTES:
            without = statistics.median(times[(route, "without")]) * 1e3
            with_ = statistics.median(times[(route, "with")]) * 1e3
            results.append({"load": load, "route": route, "without_ms": without, "with_ms": with_})
            print(f"{load:6s} {route:26s} {without:11.2f} {with_:9.2f} {with_ / without:13.3f}")
    print("\nthe score alone, per row (the encoder beside it):")
    for row in alone:
        print(
            f"  batch {row['batch']:3d}: score {row['score_us_per_row']:7.1f} us, "
            f"encode {row['encode_us_per_row']:7.1f} us"
        )
    if args.json:
        args.json.write_text(json.dumps({"requests": results, "score": alone}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
