"""Overload, side by side in one run: capacity, goodput under floods, and a one-digit watcher.

For each kind of request (`/sample` n=1, guided `/sample` n=256, `/reconstruct` of a 12-megapixel
photo, `/v2` decoder [16, 32]) it measures:

- capacity alone: successful requests/s at the best of a few concurrencies (the highest one
  within 5 % of the best rate);
- goodput under floods of 4x and 16x that concurrency, with clients that wait for `Retry-After`
  after a 503 and with clients that send again at once, as a share of capacity: the 200s answered
  within the flood's seconds, whose clients then close their connections (until then the rate
  also counted the seconds spent waiting for the last answers and refusals, up to a whole
  `Retry-After`);
- every status seen (504s and 5xx must be 0);
- the p99 of a watcher, one client asking for one digit every 100 ms during each flood (from
  `WATCH_AFTER_S` into it), in a load process of its own.

The server runs pinned to one core (`--server-cpus`) and the load to another (`--load-cpus`), a
small asyncio HTTP/1.1 client with keep-alive connections (bench/http_client.py).

    .venv/bin/python bench/overload_bench.py --flood-s 10 --out runs/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from http_client import HOST, read_response
from PIL import Image, ImageFilter
from serve_bench import Server

from app.inference.admission import MAX_RETRY_AFTER_S

REPO = Path(__file__).resolve().parent.parent
WATCH_EVERY_S = 0.1
# The watcher starts this far into a flood: its first moment, all clients connecting and sending
# at once, is a storm of its own (docs/benchmarks.md), and one request of ~90 would be its p99.
WATCH_AFTER_S = 1.0
FLOOD_NICENESS = 10  # the load's `nice`, above the watcher's 0
BOUNDARY = "overloadboundary"
# Each flood starts on a server at rest: the clients the last one refused were told to come back
# up to this much later, and the server keeps their places in those seconds (`ReturnBook`) even
# though they are gone; the next flood's refusals would be told to wait behind them.
SETTLE_S = MAX_RETRY_AFTER_S


def post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def photo_12mp() -> bytes:
    """A 4000x3000 JPEG: a bundled example digit, drawn large in ink on unevenly lit paper."""
    digit = Image.open(REPO / "app" / "images" / "example_digits" / "7-0.png").convert("L")
    ink = digit.resize((1800, 1800), Image.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    y, x = np.mgrid[0:3000, 0:4000]
    paper = 200 + 30 * (x / 4000) - 20 * (y / 3000)  # light from one side
    paper += np.random.default_rng(0).normal(0, 4, paper.shape)
    page = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    dark = Image.fromarray((255 - np.asarray(ink, np.float32) * 0.7).astype(np.uint8))
    page.paste(dark, (1100, 600), ink)
    out = io.BytesIO()
    page.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def requests() -> dict[str, bytes]:
    guided = {"digits": [i % 10 for i in range(256)]}
    z = np.random.default_rng(1).standard_normal((16, 32)).round(4)
    v2 = {"inputs": [{"name": "z", "shape": [16, 32], "datatype": "FP32", "data": z.tolist()}]}
    photo = photo_12mp()
    upload = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return {
        "sample n=1": post("/sample", b'{"n": 1}'),
        "guided n=256": post("/sample", json.dumps(guided).encode()),
        "reconstruct 12 MP": post(
            "/reconstruct", upload, f"multipart/form-data; boundary={BOUNDARY}"
        ),
        "v2 decoder [16,32]": post("/v2/models/mnist-vae-decoder/infer", json.dumps(v2).encode()),
    }


async def _client(port, request, mode, statuses, latencies, every_s=0.0) -> None:
    """Sends `request` until cancelled: on 503 `mode` "wait" sleeps `Retry-After`, "at-once"
    sends again. `every_s`: the watcher's pause between requests."""
    reader = writer = None
    try:
        while True:
            try:
                if writer is None or reader.at_eof():
                    # closed while it waited (the server's keep-alive timeout, or `Connection:
                    # close`): a new one, as HTTP clients do before they reuse a connection
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                started = time.perf_counter()
                writer.write(request)
                status, retry = await read_response(reader)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                statuses["connection error"] += 1
                writer = None
                await asyncio.sleep(0.05)
                continue
            statuses[status] += 1
            if status == 200:
                latencies.append(time.perf_counter() - started)
            elif status == 503 and mode == "wait":
                await asyncio.sleep(retry or 1)
            if every_s:
                await asyncio.sleep(every_s)
    finally:
        if writer is not None:
            writer.close()


async def _run_clients_for(seconds: float, clients: list) -> float:
    """Runs the clients for `seconds`, then closes their connections (what they were still waiting
    for is not counted: a flood's rate is what the server answered within it); the seconds run."""
    tasks = [asyncio.create_task(client) for client in clients]
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return elapsed


async def _run(port, request, clients, seconds, mode) -> dict:
    statuses: Counter = Counter()
    latencies: list[float] = []
    tasks = [_client(port, request, mode, statuses, latencies) for _ in range(clients)]
    elapsed = await _run_clients_for(seconds, tasks)
    return {
        "clients": clients,
        "mode": mode,
        "ok_per_s": statuses[200] / elapsed,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "p99_ms": _p99(latencies),
    }


async def _watch(port, request, seconds) -> dict:
    statuses: Counter = Counter()
    latencies: list[float] = []
    await asyncio.sleep(WATCH_AFTER_S)
    client = _client(port, request, "wait", statuses, latencies, WATCH_EVERY_S)
    await _run_clients_for(seconds - WATCH_AFTER_S, [client])
    return {
        "watcher_p99_ms": _p99(latencies),
        "watcher_statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
    }


def _p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return statistics.quantiles(values, n=100)[98] * 1000


def _load(args: tuple) -> dict:
    cpus, port, request, clients, seconds, mode = args
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    if clients == 0:  # the watcher
        return asyncio.run(_watch(port, request, seconds))
    # The flood yields its core to the watcher, which shares it: the watcher's p99 is then the
    # server's, not its own wait for a core behind 256 clients.
    os.setpriority(os.PRIO_PROCESS, 0, FLOOD_NICENESS)
    return asyncio.run(_run(port, request, clients, seconds, mode))


def load(pools, cpus, port, request, clients, seconds, mode="wait", watch=None) -> dict:
    """One load run in the first load process (pinned to `cpus`); with `watch`, the watcher runs
    beside it in the second, so it measures the server, not the flood's event loop (sharing one,
    its p99 was twice what a separate client saw)."""
    flood_pool, watch_pool = pools
    flood = flood_pool.apply_async(_load, ((cpus, port, request, clients, seconds, mode),))
    if watch is None:
        return flood.get()
    watcher = watch_pool.apply_async(_load, ((cpus, port, watch, 0, seconds, "wait"),))
    return {**flood.get(), **watcher.get()}


def bench(args: argparse.Namespace) -> dict:
    kinds = requests()
    watch = kinds["sample n=1"]
    server = Server(
        REPO / "models" / "mnist-vae.pt", args.max_batch_size, "cpu", cpus=args.server_cpus
    )
    results: dict = {"kinds": {}}
    try:
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(1) as flood_pool, spawn.Pool(1) as watch_pool:
            pools = (flood_pool, watch_pool)
            for name, request in kinds.items():
                if args.only and name not in args.only:
                    continue
                print(f"{name}: capacity", file=sys.stderr, flush=True)
                load(pools, args.load_cpus, server.port, request, 1, 2.0)  # warm-up, learn costs
                levels = [
                    load(pools, args.load_cpus, server.port, request, c, args.capacity_s)
                    for c in args.concurrency
                ]
                top = max(r["ok_per_s"] for r in levels)
                # the highest concurrency within 5 % of the best rate: the floods build on it
                best = [r for r in levels if r["ok_per_s"] >= 0.95 * top][-1]
                alone = load(pools, args.load_cpus, server.port, watch, 1, 3.0, watch=None)
                floods = []
                for factor in (4, 16):
                    for mode in ("wait", "at-once"):
                        clients = best["clients"] * factor
                        print(f"{name}: {clients} clients, {mode}", file=sys.stderr, flush=True)
                        time.sleep(SETTLE_S)
                        flood = load(
                            pools, args.load_cpus, server.port, request, clients, args.flood_s,
                            mode, watch,
                        )  # fmt: skip
                        flood["goodput"] = flood["ok_per_s"] / best["ok_per_s"]
                        flood["factor"] = factor
                        floods.append(flood)
                results["kinds"][name] = {
                    "levels": levels,
                    "capacity": best,
                    "watcher_alone_p99_ms": alone["p99_ms"],
                    "floods": floods,
                }
    finally:
        server.stop()
    return results


def table(results: dict) -> str:
    lines = [
        "| kind | capacity req/s (c) | flood | clients | goodput | statuses "
        "| watcher p99 ms (503s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["kinds"].items():
        cap = r["capacity"]
        for f in r["floods"]:
            watcher = f["watcher_p99_ms"]
            refused = f["watcher_statuses"].get("503", 0)
            lines.append(
                f"| {name} | {cap['ok_per_s']:.1f} ({cap['clients']}) | {f['factor']}x {f['mode']} "
                f"| {f['clients']} | {f['goodput']:.2f} | {f['statuses']} | "
                f"{watcher:.0f} ({refused}) |"
                if watcher is not None
                else f"| {name} | {cap['ok_per_s']:.1f} ({cap['clients']}) | {f['factor']}x "
                f"{f['mode']} | {f['clients']} | {f['goodput']:.2f} | {f['statuses']} | - |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--capacity-s", type=float, default=4.0)
    parser.add_argument("--flood-s", type=float, default=10.0)
    parser.add_argument("--only", nargs="*", help="kinds to run (default: all)")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = bench(args)
    results["args"] = {k: str(v) for k, v in vars(args).items()}
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
