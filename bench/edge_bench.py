"""Measures the HTTP edge (issue 12): what its limits cost, and what they hold against.

Every server runs on 127.0.0.1 on a free port; every number comes from one run of this script.

    .venv/bin/python bench/edge_bench.py cost        # /healthz, /sample c=64: plain uvicorn vs edge
    .venv/bin/python bench/edge_bench.py headers     # 20 connections x 50 MB of header
    .venv/bin/python bench/edge_bench.py shutdown    # SIGTERM with 5 half-sent uploads
    .venv/bin/python bench/edge_bench.py uploads     # 64 concurrent 4096x4096 16-bit PNG uploads
    .venv/bin/python bench/edge_bench.py soak --requests 100000
    .venv/bin/python bench/edge_bench.py all --json edge.json

`cost` serves the same code twice, side by side and interleaved (`--rounds`): once as plain
`uvicorn app.main:app` (httptools without limits: the baseline) and once as `vae-serve` (the
guarded protocol and the drain), and prints requests/s, the server's CPU time per request (steadier
than requests/s on a shared machine) and the edge/plain ratios. `--baseline-ref REF` serves the
plain baseline from a git checkout of REF instead, to include the app-level admission work too
(e.g. `--baseline-ref 352df2e`, the last commit before the edge was wired into the app);
`--baseline-kind edge` serves that baseline as `vae-serve` too, to compare two versions of the
whole server (e.g. `cost --baseline-ref 6450f55 --baseline-kind edge`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from http_client import HOST, replay

from harness.heavy_png import png16_rgba
from harness.live_server import PLAIN_UVICORN, VAE_SERVE, LiveServer

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- servers


def start_server(kind: str, checkpoint: Path, cwd: Path = REPO, **env: str) -> LiveServer:
    """A server from the checkout at `cwd`, started once /readyz answers: `edge` is `vae-serve`,
    `plain` is `uvicorn app.main:app`."""
    command = VAE_SERVE if kind == "edge" else [*PLAIN_UVICORN, "--no-access-log"]
    return LiveServer(
        checkpoint,
        command=command,
        ready=True,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stop_grace_s=40,
        VAE_LOG_LEVEL="warning",
        PYTHONPATH=str(cwd),
        **env,
    )


def http_get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---------------------------------------------------------------- load


def sample_request(port: int) -> bytes:
    body = b'{"n": 1}'
    return (
        f"POST /sample HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def healthz_request(port: int) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


async def _load(request: bytes, port: int, concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    statuses: list[int] = []
    now = time.perf_counter()
    measure_from, stop_at = now + 0.5, now + 0.5 + duration

    def record(start: float, elapsed: float, status: int) -> None:
        if start >= measure_from:
            latencies.append(elapsed)
            statuses.append(status)
        else:
            statuses.append(0)  # warm-up: counted for the CPU per request only

    await asyncio.gather(*[replay(request, port, stop_at, record) for _ in range(concurrency)])
    ordered = sorted(latencies)
    return {
        "rps": len(ordered) / duration,
        "p50_ms": ordered[len(ordered) // 2] * 1000 if ordered else None,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
        if ordered
        else None,
        "errors": sum(1 for s in statuses if s >= 400),
        "total": len(statuses),
    }


def load_process(endpoint: str, port: int, concurrency: int, duration: float) -> dict:
    """The load runs in its own process, so it never shares the server's event loop."""
    command = [sys.executable, __file__, "_load", endpoint, str(port), str(concurrency)]
    command.append(str(duration))
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# ---------------------------------------------------------------- measurements


def baseline_checkout(ref: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="edge-baseline-")) / "src"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=REPO, check=True)
    return path


def measure_cost(args: argparse.Namespace) -> dict:
    base_cwd = baseline_checkout(args.baseline_ref) if args.baseline_ref else REPO
    try:
        servers = {
            "plain": start_server(args.baseline_kind, args.checkpoint, base_cwd),
            "edge": start_server("edge", args.checkpoint),
        }
        cells: dict[str, list[dict]] = {}
        for _ in range(args.rounds):  # interleaved, so background load hits both alike
            for endpoint in ("healthz", "sample"):
                for label, server in servers.items():
                    cpu = server.cpu_s()
                    cell = load_process(endpoint, server.port, 64, args.duration)
                    cell["cpu_us_per_request"] = (server.cpu_s() - cpu) / cell["total"] * 1e6
                    cells.setdefault(f"{label}/{endpoint}", []).append(cell)
                    log(
                        f"cost {label:5} {endpoint:7} c=64 {cell['rps']:8.0f} req/s "
                        f"p99 {cell['p99_ms']:.1f} ms, server CPU "
                        f"{cell['cpu_us_per_request']:.0f} us/request, errors {cell['errors']}"
                    )
        for server in servers.values():
            server.stop()
    finally:
        if args.baseline_ref:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_cwd)], cwd=REPO)
    result: dict = {"rounds": args.rounds, "duration_s": args.duration, "cells": {}}
    for name, runs in cells.items():
        result["cells"][name] = {
            "rps": statistics.median(r["rps"] for r in runs),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
        }
    for endpoint in ("healthz", "sample"):
        edge, plain = result["cells"][f"edge/{endpoint}"], result["cells"][f"plain/{endpoint}"]
        ratio = edge["rps"] / plain["rps"]
        cpu_ratio = edge["cpu_us_per_request"] / plain["cpu_us_per_request"]
        result[f"{endpoint}_rps_edge_vs_plain"] = ratio
        result[f"{endpoint}_cpu_per_request_edge_vs_plain"] = cpu_ratio
        log(
            f"cost {endpoint}: edge/plain req/s {ratio:.3f}, server CPU per request "
            f"{cpu_ratio:.3f} (medians of {args.rounds} rounds)"
        )
    return result


def measure_headers(args: argparse.Namespace) -> dict:
    """20 connections each sending 50 MB of header that never ends."""
    server = start_server("edge", args.checkpoint)
    before = server.memory_mb()
    per_conn = args.header_mb * 1024 * 1024
    sent = [0] * args.connections

    def flood(i: int) -> None:
        try:
            with socket.create_connection((HOST, server.port), timeout=30) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: ")
                piece = b"a" * 65536
                while sent[i] < per_conn:
                    sock.sendall(piece)
                    sent[i] += len(piece)
        except OSError:
            pass

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(args.connections)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    latencies, peak = [], before
    while any(t.is_alive() for t in threads) and time.monotonic() - start < 120:
        t0 = time.perf_counter()
        try:
            ok = http_get(server.port, "/healthz", timeout=8)[0] == 200
        except OSError:
            ok = False
        latencies.append((time.perf_counter() - t0) * 1000 if ok else float("inf"))
        peak = max(peak, server.memory_mb())
        time.sleep(0.05)
    peak = max(peak, server.memory_mb())
    server.stop()
    result = {
        "connections": args.connections,
        "header_mb_each": args.header_mb,
        "accepted_mb_each": round(statistics.median(sent) / 2**20, 2),
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "growth_mb": round(peak - before, 1),
        "healthz_checks": len(latencies),
        "healthz_max_ms": round(max(latencies), 1) if latencies else None,
    }
    log(f"headers: {result}")
    return result


def half_sent_upload(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.sendall(
        b"POST /reconstruct HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n' + b"\x89PNG" * 100
    )
    return sock


def measure_shutdown(args: argparse.Namespace) -> dict:
    """SIGTERM while 5 clients are half-way through an upload and never send the rest."""
    server = start_server(
        "edge", args.checkpoint, VAE_SHUTDOWN_GRACE_S=str(args.grace), VAE_BODY_TIMEOUT_S="3600"
    )
    uploads = [half_sent_upload(server.port) for _ in range(5)]
    time.sleep(0.5)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    readyz, sample = http_get(server.port, "/readyz")[0], None
    try:
        with socket.create_connection((HOST, server.port), timeout=5) as sock:
            sock.sendall(
                sample_request(server.port).replace(
                    b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1
                )
            )
            sample = int(sock.recv(64).split()[1])
    except OSError:
        pass
    try:
        server.process.wait(timeout=args.grace + 30)
    except subprocess.TimeoutExpired:
        server.process.kill()
    exited_after = time.monotonic() - start
    for sock in uploads:
        sock.close()
    result = {
        "grace_s": args.grace,
        "half_sent_uploads": len(uploads),
        "readyz_after_sigterm": readyz,
        "sample_after_sigterm": sample,
        "exit_code": server.process.returncode,
        "exited_after_s": round(exited_after, 2),
        "within_grace": exited_after <= args.grace,
    }
    log(f"shutdown: {result}")
    return result


def upload_request(port: int, png: bytes) -> bytes:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--b--\r\n"
    )
    return (
        f"POST /encode HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _one_upload(port: int, request: bytes) -> tuple[int, float, bool]:
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request)
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    try:
        json.loads(body)
        is_json = True
    except ValueError:
        is_json = False
    return status, time.perf_counter() - start, is_json


def measure_uploads(args: argparse.Namespace) -> dict:
    """64 concurrent uploads of a 4096x4096 16-bit RGBA PNG (within the limits)."""
    server = start_server("edge", args.checkpoint)
    before = server.memory_mb()
    request = upload_request(server.port, png16_rgba(4096))

    async def flood() -> list[tuple[int, float, bool]]:
        return await asyncio.gather(*[_one_upload(server.port, request) for _ in range(64)])

    outcomes = asyncio.run(flood())
    peak = server.memory_mb("VmHWM")
    server.stop()
    latencies = sorted(o[1] for o in outcomes)
    statuses: dict[str, int] = {}
    for status, _, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    result = {
        "uploads": 64,
        "statuses": statuses,
        "all_json": all(o[2] for o in outcomes),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak, 1),
        "p50_s": round(latencies[32], 2),
        "p99_s": round(latencies[int(0.99 * 64)], 2),
        "max_s": round(latencies[-1], 2),
    }
    log(f"uploads: {result}")
    return result


def measure_soak(args: argparse.Namespace) -> dict:
    """`--requests` /sample calls at c=16 on keep-alive connections; memory before and after."""
    server = start_server("edge", args.checkpoint)
    warm = load_process("sample", server.port, 16, 2.0)
    before = server.memory_mb()
    done, errors, start = 0, 0, time.monotonic()
    while done < args.requests:
        cell = load_process("sample", server.port, 16, 10.0)
        done += int(cell["rps"] * 10.0)
        errors += cell["errors"]
    after = server.memory_mb()
    server.stop()
    result = {
        "requests": done,
        "errors": errors + warm["errors"],
        "seconds": round(time.monotonic() - start, 1),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
    }
    log(f"soak: {result}")
    return result


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_load":
        endpoint, port, concurrency, duration = argv[1], int(argv[2]), int(argv[3]), float(argv[4])
        build = sample_request if endpoint == "sample" else healthz_request
        print(json.dumps(asyncio.run(_load(build(port), port, concurrency, duration))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["cost", "headers", "shutdown", "uploads", "soak", "all"])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cost cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-ref", default=None)
    parser.add_argument("--baseline-kind", choices=["plain", "edge"], default="plain")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--header-mb", type=int, default=50)
    parser.add_argument("--grace", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    steps = {
        "cost": measure_cost,
        "headers": measure_headers,
        "shutdown": measure_shutdown,
        "uploads": measure_uploads,
        "soak": measure_soak,
    }
    chosen = list(steps) if args.what == "all" else [args.what]
    results = {name: steps[name](args) for name in chosen}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
