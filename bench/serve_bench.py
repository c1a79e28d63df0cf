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
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from http_client import HOST, answers_200, replay

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)
# sample-digit: one chosen digit (a 4, the digit the guide refuses most often) through the guide
ENDPOINTS = ("healthz", "sample", "sample-digit", "reconstruct", "encode")
BOUNDARY = "benchboundary"


def digit_png() -> bytes:
    return (REPO / "app" / "images" / "example_digits" / "7-0.png").read_bytes()


def request_bytes(endpoint: str, port: int) -> bytes:
    """The exact bytes of one request, built once and replayed."""
    host = f"Host: {HOST}:{port}\r\n"
    if endpoint == "healthz":
        return f"GET /healthz HTTP/1.1\r\n{host}\r\n".encode()
    if endpoint == "encode":
        image = base64.urlsafe_b64encode(digit_png()).decode().rstrip("=")
        return f"GET /encode?image={image} HTTP/1.1\r\n{host}\r\n".encode()
    if endpoint in ("sample", "sample-digit"):
        body = b'{"n": 1}' if endpoint == "sample" else b'{"n": 1, "digit": 4}'
        head = f"POST /sample HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
    else:
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="7.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + digit_png()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
        head = (
            f"POST /reconstruct HTTP/1.1\r\n{host}"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        )
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


async def _load(endpoint: str, port: int, concurrency: int, duration: float, warmup: float) -> dict:
    request = request_bytes(endpoint, port)
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


def run_load_process(endpoint: str, port: int, concurrency: int, duration: float) -> dict:
    """Runs one cell's load from a separate process, so the client never shares the server's CPU
    time slice or event loop."""
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
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=duration + 60)
    return json.loads(out.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Server:
    """`vae-serve` in a subprocess; started when its log says uvicorn is up."""

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
        self.port = free_port()
        env = {
            **os.environ,
            **({"PYTHONPATH": str(tree)} if tree != REPO else {}),
            "VAE_CHECKPOINT": str(checkpoint),
            "VAE_DEVICE": device,
            "VAE_MAX_BATCH_SIZE": str(max_batch_size),
            "VAE_LOG_LEVEL": "warning",
            **(env or {}),
        }
        env.pop("VAE_API_KEY", None)
        pin = ["taskset", "-c", cpus] if cpus else []
        self.process = subprocess.Popen(
            [
                *pin,
                sys.executable,
                "-m",
                "app.server.cli",
                "--host",
                HOST,
                "--port",
                str(self.port),
            ],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        deadline = time.monotonic() + 180
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("server did not start:\n" + "".join(self.log[-20:]))
            time.sleep(0.2)  # polling /readyz, as a load balancer would

    def _ready(self) -> bool:
        return answers_200(self.port, "/readyz")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class RayServeServer:
    """A one-node Ray cluster serving `deploy/ray/serve.yaml` with `replicas` fixed replicas.

    The node gets one CPU per replica and its own temp dir and ports, on a loopback address other
    than 127.0.0.1 (Ray swaps that one for the machine's outward address); `stop` kills every
    process the node started.
    """

    NODE_IP = "127.0.0.2"

    def __init__(self, checkpoint: Path, replicas: int, device: str) -> None:
        import yaml

        self.port = free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="ray-bench-", dir="/tmp")
        gcs = f"{self.NODE_IP}:{free_port()}"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
        env["RAY_AUTH_MODE"] = "disabled"  # loopback only; a stray ~/.ray/auth_token is ignored
        env.pop("VAE_API_KEY", None)
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block"]
        command += ["--node-ip-address", self.NODE_IP, "--port", gcs.rsplit(":", 1)[1]]
        command += ["--num-cpus", str(replicas), "--num-gpus", "0", "--temp-dir", self.temp_dir]
        command += ["--include-dashboard=false", "--disable-usage-stats"]
        command += ["--object-store-memory", "100000000"]
        for flag in (
            "--dashboard-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
            "--ray-client-server-port",
        ):
            command += [flag, str(free_port())]
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.log: list[str] = []
        for line in self.process.stdout:
            self.log.append(line)
            if "Ray runtime started" in line:
                break
        threading.Thread(target=lambda: self.log.extend(self.process.stdout), daemon=True).start()
        try:
            config = yaml.safe_load((REPO / "deploy" / "ray" / "serve.yaml").read_text())
            config["http_options"].update(host=HOST, port=self.port)
            [application] = config["applications"]
            application["runtime_env"]["env_vars"].update(
                VAE_CHECKPOINT=str(checkpoint.resolve()), VAE_DEVICE=device, VAE_LOG_LEVEL="warning"
            )
            [deployment] = application["deployments"]
            # Exactly `replicas` (the deployment autoscales by default).
            deployment["autoscaling_config"].update(
                min_replicas=replicas, max_replicas=replicas, initial_replicas=replicas
            )
            path = Path(self.temp_dir) / "serve.yaml"
            path.write_text(yaml.safe_dump(config))
            serve = [str(Path(sys.executable).with_name("serve")), "run", str(path)]
            serve += ["--address", gcs, "--non-blocking"]
            subprocess.run(serve, env=env, check=True, capture_output=True, timeout=300)
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
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`: Ray's workers start sessions of their own, so no killpg."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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
                    print(
                        f"{mode:9} {endpoint:11} c={concurrency:<3} {cell['rps']:8.0f} req/s "
                        f"p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms  "
                        f"errors {cell['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
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
            _load(args.load, args.port, args.concurrency[0], args.duration, warmup=0.5)
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
