"""What OpenTelemetry tracing costs: the service with tracing off, on at sampling 1.0 (every span
exported over OTLP/HTTP to a receiver on loopback), and on at sampling 0.0, side by side.

Every server runs at once, pinned to one core (`taskset -c 0`); `wrk` and the receiver share the
other. The cells are interleaved round by round (each row measured once per round, in turn), so
a neighbour's load drifts across all rows alike; the table gives each row's median over the
rounds. `--baseline REF` adds the service at REF (before tracing existed) as the reference row.

    .venv/bin/python bench/tracing_bench.py --rounds 5 --duration 4 --baseline 007f95c
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from peers_bench import (
    HOST,
    REPO,
    Running,
    baseline_worktree,
    drop_worktree,
    parse_wrk,
    scripts,
    service,
)

CELLS = {
    "/sample c=64": ("sample", "/sample"),
    "/reconstruct c=64": ("reconstruct", "/reconstruct"),
}


class OtlpSink:
    """Accepts OTLP/HTTP trace exports on loopback and counts the bytes (nothing is decoded)."""

    def __init__(self) -> None:
        self.bytes = 0
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                sink.bytes += len(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def measure(server: Running, path: str, script: Path, duration: float) -> tuple[float, float]:
    """req/s and the server's CPU microseconds per request under `wrk -c64` (1 s warm-up first).
    CPU time per request hardly moves when a neighbour takes the core; req/s does."""
    url = f"http://{HOST}:{server.port}{path}"
    base = ["taskset", "-c", "1", "wrk", "-t1", "-c64", "--timeout", "10s", "-s", str(script)]
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True)
    before = server.cpu_s()
    out = subprocess.run([*base, f"-d{duration:g}s", url], capture_output=True, text=True).stdout
    cpu = server.cpu_s() - before
    result = parse_wrk(out)
    assert result["errors"] == 0, (server.peer.label, path, out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return result["rps"], cpu / requests * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per cell")
    p.add_argument("--baseline", default="", help="git ref of a reference row ('' skips)")
    args = p.parse_args()

    sink = OtlpSink()
    workdir = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    lua = scripts(workdir)
    on = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}
    peers = [
        service("tracing off", args.checkpoint),
        service(
            "tracing on, sampling 1.0",
            args.checkpoint,
            **on,
            OTEL_TRACES_SAMPLER_ARG="1.0",
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        ),
        service(
            "tracing on, sampling 0.0",
            args.checkpoint,
            **on,
            OTEL_TRACES_SAMPLER_ARG="0.0",
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        ),
    ]
    tree = baseline_worktree(args.baseline, workdir / "baseline") if args.baseline else None
    if tree is not None:
        peers.insert(0, service(f"before ({args.baseline})", args.checkpoint, cwd=tree))
    rps: dict[tuple[str, str], list[float]] = {}
    cpu_us: dict[tuple[str, str], list[float]] = {}
    servers: list[Running] = []
    try:
        for peer in peers:  # one by one, so that those started are stopped if one fails
            servers.append(Running(peer, 0, workdir))
        for round_ in range(args.rounds):
            for cell, (script, path) in CELLS.items():
                for server in servers:
                    rate, cpu = measure(server, path, lua[script], args.duration)
                    rps.setdefault((server.peer.label, cell), []).append(rate)
                    cpu_us.setdefault((server.peer.label, cell), []).append(cpu)
                    print(f"{server.peer.label} {cell}: {rate:,.0f} req/s, {cpu:,.0f} us CPU/req")
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        for server in servers:
            server.stop()
        if tree is not None:
            drop_worktree(tree)
        shutil.rmtree(workdir, ignore_errors=True)
    reference = peers[0].label
    print(f"\n{args.rounds} rounds x {args.duration:g} s per cell, medians (vs the first row)")
    print("| server | " + " | ".join(f"{c} req/s | {c} CPU us/req" for c in CELLS) + " |")
    print("|---|" + "---|---|" * len(CELLS))
    for peer in peers:
        cells = []
        for cell in CELLS:
            for table in (rps, cpu_us):
                median = statistics.median(table[(peer.label, cell)])
                ratio = median / statistics.median(table[(reference, cell)])
                cells.append(f"{median:,.0f} ({ratio:.3f})")
        print(f"| {peer.label} | " + " | ".join(cells) + " |")
    print(f"\nOTLP bytes received: {sink.bytes:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
