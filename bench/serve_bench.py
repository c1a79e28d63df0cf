"""Load-tests the server: requests/s, p50 and p99 per endpoint and concurrency, batching on and off.

The server runs as `vae-serve` (one uvicorn worker) in a subprocess on 127.0.0.1; the load comes
from a second process, a small asyncio HTTP/1.1 client with keep-alive connections (one per unit
of concurrency), so the client costs far less CPU per request than httpx would.

    .venv/bin/python bench/serve_bench.py --checkpoint models/mnist-vae.pt --duration 3

`--ray-replicas 1 2` measures Ray Serve instead (the `[ray]` extra): plain `vae-serve` first, as
the reference, then for each count a one-node Ray cluster on this machine (`ray start --head`, one
CPU per replica) serving `deploy/ray/serve.yaml` with that many replicas behind Serve's HTTP
proxy, under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import mimetypes
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from http_client import HOST, print_cell, replay

from harness.live_server import VAE_SERVE
from harness.processes import free_port
from harness.ray_cluster import (
    head_args,
    ray_env,
    serve_config,
    serve_run,
    started_node,
)
from harness.server import ServerProcess

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)
# sample-digit: one chosen digit (a 4, the digit the guide refuses most often) through the guide
ENDPOINTS = ("healthz", "sample", "sample-digit", "reconstruct", "encode")
BOUNDARY = "benchboundary"


def digit_png() -> bytes:
    return (REPO / "app" / "images" / "example_digits" / "7-0.png").read_bytes()


def request_bytes(endpoint: str, port: int, upload: Path | None = None) -> bytes:
    """The exact bytes of one request, built once and replayed. Uploads are a 28x28 MNIST PNG
    (`/encode` takes it in the query), or the file `upload` (a PNG or JPEG, uploaded to both)."""
    host = f"Host: {HOST}:{port}\r\n"
    if endpoint == "healthz":
        return f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()
    if endpoint == "encode" and upload is None:
        query = base64.urlsafe_b64encode(digit_png()).decode().rstrip("=")
        return f"GET /encode?image={query} HTTP/1.1\r\n{host}\r\n".encode()
    if endpoint in ("sample", "sample-digit"):
        body = b'{"n": 1}' if endpoint == "sample" else b'{"n": 1, "digit": 4}'
        head = f"POST /sample HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
    else:
        name = upload.name if upload is not None else "7.png"
        body = (
            (
                f"--{BOUNDARY}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {mimetypes.guess_type(name)[0]}\r\n\r\n"
            ).encode()
            + (upload.read_bytes() if upload is not None else digit_png())
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        head = (
            f"POST /{endpoint} HTTP/1.1\r\n{host}"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        )
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


async def _load(
    endpoint: str,
    port: int,
    concurrency: int,
    duration: float,
    warmup: float,
    upload: Path | None = None,
) -> dict:
    request = request_bytes(endpoint, port, upload)
    latencies: list[float] = []
    errors: list[int] = []
    now = time.perf_counter()
    measure_from, stop_at = now + warmup, now + warmup + duration

    def record(start: float, elapsed: float, status: int) -> None:
        if start >= measure_from:
            latencies.append(elapsed)
            if not 200 <= status < 300:
                errors.append(status)

    await asyncio.gather(*[replay(request, port, stop_at, record) for _ in range(concurrency)])
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {
        "endpoint": endpoint,
        "concurrency": concurrency,
        "requests": len(ordered),
        "errors": len(errors),
        "rps": len(ordered) / duration,
        "p50_ms": pick(0.50) if ordered else None,
        "p99_ms": pick(0.99) if ordered else None,
        "mean_ms": statistics.fmean(ordered) * 1000 if ordered else None,
    }


def run_load_process(
    endpoint: str, port: int, concurrency: int, duration: float, upload: Path | None = None
) -> dict:
    """Runs one cell's load from a separate process, so the client never shares the server's CPU
    time slice or event loop. `upload`: the image uploads send (`request_bytes`)."""
    command = [
        sys.executable,
        __file__,
        "--load",
        endpoint,
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        *(["--upload", str(upload)] if upload is not None else []),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60)
    return json.loads(out.stdout)


class Server(ServerProcess):
    """`vae-serve` in a subprocess, started once /readyz answers 200 (as a load balancer sees
    it). Unlike the tests' `LiveServer`, it keeps the shell's `VAE_*` settings (an API key
    aside): a bench run may set them."""

    def __init__(
        self,
        checkpoint: Path,
        max_batch_size: int,
        device: str,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
        tree: Path = REPO,
    ) -> None:
        """`env`: more `VAE_*` settings; `cpus`: the cores to pin it to (`taskset -c`); `tree`:
        the checkout whose code it runs (another one: a baseline to compare with)."""
        environ = {
            **os.environ,
            **({"PYTHONPATH": str(tree)} if tree != REPO else {}),
            "VAE_CHECKPOINT": str(checkpoint),
            "VAE_DEVICE": device,
            "VAE_MAX_BATCH_SIZE": str(max_batch_size),
            "VAE_LOG_LEVEL": "warning",
            **(env or {}),
        }
        environ.pop("VAE_API_KEY", None)
        command = [*VAE_SERVE, "--host", HOST, "--port", "{port}"]
        super().__init__(
            command, cwd=tree, env=environ, ready="/readyz", stdout=subprocess.DEVNULL, cpus=cpus
        )


class RayServeServer:
    """A one-node Ray cluster serving `deploy/ray/serve.yaml` with `replicas` fixed replicas:
    one CPU per replica, and `stop` kills every process the node started."""

    NODE_IP = "127.0.0.2"

    def __init__(self, checkpoint: Path, replicas: int, device: str) -> None:
        self.port = free_port()
        gcs_port = free_port()
        env = ray_env()
        self.node = started_node("bench", head_args(self.NODE_IP, gcs_port), env, cpus=replicas)
        try:
            config = serve_config(
                self.port,
                replicas,
                VAE_CHECKPOINT=str(checkpoint.resolve()),
                VAE_DEVICE=device,
                VAE_LOG_LEVEL="warning",
            )
            path = Path(self.node.temp_dir) / "serve.yaml"
            serve_run(config, path, f"{self.NODE_IP}:{gcs_port}", env)
            self._wait_for_replicas(replicas)
        except BaseException:
            self.stop()
            raise

    def _wait_for_replicas(self, replicas: int) -> None:
        """Until `replicas` different replicas have answered /readyz (each loads its model)."""
        seen: set[bytes] = set()
        deadline = time.monotonic() + 300
        while len(seen) < replicas:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(seen)} of {replicas} Ray replicas came up")
            try:
                with socket.create_connection((HOST, self.port), timeout=5) as sock:
                    sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                    head = sock.recv(4096)
                if head.startswith(b"HTTP/1.1 200"):
                    seen |= {
                        line for line in head.lower().split(b"\r\n") if b"x-ray-replica" in line
                    }
                    continue
            except OSError:
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        self.node.kill()


def run_bench(args: argparse.Namespace) -> dict:
    results: dict = {"checkpoint": str(args.checkpoint), "duration_s": args.duration, "cells": []}
    if args.ray_replicas:  # plain vae-serve first, as the reference in the same run
        servers = [("vae-serve", lambda: Server(args.checkpoint, args.max_batch_size, args.device))]
        servers += [
            (f"ray x{n}", lambda n=n: RayServeServer(args.checkpoint, n, args.device))
            for n in args.ray_replicas
        ]
    else:
        servers = [
            (mode, lambda b=batch: Server(args.checkpoint, b, args.device))
            for mode, batch in (("batched", args.max_batch_size), ("unbatched", 1))
        ]
    for mode, start in servers:
        server = start()
        try:
            for endpoint in args.endpoints:
                for concurrency in args.concurrency:
                    cell = run_load_process(endpoint, server.port, concurrency, args.duration)
                    cell["mode"] = mode
                    results["cells"].append(cell)
                    print_cell(f"{mode:9} {endpoint:11}", concurrency, cell)
        finally:
            server.stop()
    return results


def cell(results: dict, mode: str, endpoint: str, concurrency: int) -> dict | None:
    for c in results["cells"]:
        if (c["mode"], c["endpoint"], c["concurrency"]) == (mode, endpoint, concurrency):
            return c
    return None


def table(results: dict) -> str:
    modes = list(dict.fromkeys(c["mode"] for c in results["cells"]))
    lines = [
        "| endpoint | c | " + " | ".join(f"{m} req/s | p50 ms | p99 ms" for m in modes) + " |",
        "|---|---:|" + "---:|---:|---:|" * len(modes),
    ]
    endpoints = dict.fromkeys(c["endpoint"] for c in results["cells"])
    levels = dict.fromkeys(c["concurrency"] for c in results["cells"])
    for endpoint in endpoints:
        for c in levels:
            row = [endpoint, str(c)]
            for mode in modes:
                x = cell(results, mode, endpoint, c)
                row += (
                    [f"{x['rps']:.0f}", f"{x['p50_ms']:.1f}", f"{x['p99_ms']:.1f}"]
                    if x
                    else ["-"] * 3
                )
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(results: dict) -> dict:
    top = max(c["concurrency"] for c in results["cells"])
    sample = cell(results, "batched", "sample", top)
    health = cell(results, "batched", "healthz", top)
    unbatched = cell(results, "unbatched", "sample", top)
    out = {"concurrency": top}
    if sample and health:
        out["sample_vs_healthz"] = sample["rps"] / health["rps"]
    digit = cell(results, "batched", "sample-digit", top)
    if sample and digit:
        out["digit_vs_plain_sample"] = digit["rps"] / sample["rps"]
    if sample and unbatched:
        out["batched_vs_unbatched_sample"] = sample["rps"] / unbatched["rps"]
    out["p99_ms_batched"] = {
        c["endpoint"]: c["p99_ms"]
        for c in results["cells"]
        if c["mode"] == "batched" and c["concurrency"] == top
    }
    return out


def report(results: dict) -> str:
    t = targets(results)
    c = t["concurrency"]
    lines = [table(results), ""]
    if "sample_vs_healthz" in t:
        lines.append(
            f"- /sample vs /healthz at c={c}: {t['sample_vs_healthz']:.0%} (target >= 50%)"
        )
    if "digit_vs_plain_sample" in t:
        lines.append(
            f"- /sample with a chosen digit vs plain at c={c}: {t['digit_vs_plain_sample']:.0%} "
            "of the requests/s (the guide: one classifier pass, a few redraws)"
        )
    if "batched_vs_unbatched_sample" in t:
        lines.append(
            f"- /sample batched vs unbatched at c={c}: "
            f"{t['batched_vs_unbatched_sample']:.2f}x (target >= 2x)"
        )
    if t["p99_ms_batched"]:
        p99 = ", ".join(f"{k} {v:.1f} ms" for k, v in t["p99_ms_batched"].items())
        lines.append(f"- p99 at c={c}, batched: {p99} (target <= 50 ms)")
    ray = sorted({m for m in (x["mode"] for x in results["cells"]) if m.startswith("ray x")})
    for endpoint in dict.fromkeys(x["endpoint"] for x in results["cells"]):
        one, *more = [cell(results, m, endpoint, c) for m in ray] or [None]
        for mode, x in zip(ray[1:], more, strict=True):
            if one and x:
                ratio = x["rps"] / one["rps"]
                lines.append(f"- {endpoint} at c={c}: {mode} vs ray x1 {ratio:.2f}x")
        plain = cell(results, "vae-serve", endpoint, c)
        if plain and one:
            ratio = one["rps"] / plain["rps"]
            lines.append(f"- {endpoint} at c={c}: ray x1 vs vae-serve {ratio:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_ckpt = REPO / "models" / "mnist-vae.pt"
    p.add_argument("--checkpoint", type=Path, default=default_ckpt)
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per cell")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch-size", type=int, default=64, help="for the batched runs")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--endpoints", nargs="+", default=list(ENDPOINTS), choices=ENDPOINTS)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument(
        "--ray-replicas",
        type=int,
        nargs="+",
        default=None,
        help="measure Ray Serve with these replica counts instead (the [ray] extra)",
    )
    p.add_argument("--load", choices=ENDPOINTS, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upload", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:  # the load-generator process
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        result = asyncio.run(
            _load(args.load, args.port, args.concurrency[0], args.duration, 0.5, upload=args.upload)
        )
        print(json.dumps(result))
        return 0
    if not args.checkpoint.is_file():
        print(f"serve_bench: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    results = run_bench(args)
    results["targets"] = targets(results)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
