"""This service beside its peers, same checkpoint, same contract, one table from one run.

Every server is started in turn pinned to one core (`taskset -c 0`), and `wrk` puts the load on
from the other core (`taskset -c 1`), one thread, keep-alive connections. Each cell warms up for
1 s, then measures for `--duration` seconds. The contract is the service's: `POST /sample` with
`{"n": 1}` answers a 32x32 PNG; each server's own no-op route (`/healthz`, LitServe's `/health`)
is its HTTP ceiling.

    apt-get install -y wrk                    # the load generator (Debian)
    pip install -e '.[bench]'                 # LitServe and Ray Serve
    .venv/bin/python bench/peers_bench.py --duration 8

Rows: this service (the default backend, one worker; pinned to one core, so a lone row runs on
the event loop, `VAE_INLINE_LONE_BATCHES=auto`), its reduced-precision backend (`openvino-bf16`),
optionally (`--rows threaded`) the same with every batch on the inference thread, the same service
at `--baseline` (default: main before issue 8, served from a git worktree of that commit, for the
before/after of every endpoint), a naive FastAPI server (one forward pass per request in the
threadpool), LitServe (batching up to 64) and Ray Serve (`@serve.batch` up to 64).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from http_client import HOST, print_cell

from harness.processes import free_port
from harness.server import DidNotStart, ServerProcess

REPO = Path(__file__).resolve().parent.parent
BASELINE = "eb9a3a9"  # main just before issue 8 (idle batch wait, eager torch, logging path)
BOUNDARY = "benchboundary"
UNSET = ("VAE_API_KEY", "VAE_ADMIN_TOKEN")  # every server here is open, as the peers are


@dataclass
class Peer:
    """One server to start: its command, environment, routes, and which cells it takes part in."""

    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    noop: str = "/healthz"
    ready: str = "/healthz"
    image_routes: bool = False  # /reconstruct and /encode (this service only)
    startup_s: float = 180.0


class Running(ServerProcess):
    """A peer's server process, pinned to `cpu` and in a session of its own (LitServe and Ray
    start children: `stop` reaches them), up once its ready route answers 200. Its log goes to a
    file: the kernel writes it, no reader competes for a core."""

    def __init__(self, peer: Peer, cpu: int, logs: Path) -> None:
        self.peer = peer
        port = free_port()
        try:
            super().__init__(
                peer.command,
                port=port,
                cwd=peer.cwd,
                env={k: v for k, v in {**os.environ, **peer.env}.items() if k not in UNSET},
                ready=peer.ready,
                output=logs / f"server-{port}.log",
                cpus=str(cpu),
                own_session=True,
                startup_timeout_s=peer.startup_s,
            )
        except DidNotStart as exc:
            raise DidNotStart(f"{peer.label} did not start: {exc}") from None


def digit_png() -> bytes:
    return (REPO / "app" / "images" / "example_digits" / "7-0.png").read_bytes()


def wrk_script(workdir: Path, name: str, method: str, path: str, body: bytes, ctype: str) -> Path:
    """A wrk Lua script that sends one fixed request (the body is read from a file: it may be
    binary)."""
    body_file = workdir / f"{name}.body"
    body_file.write_bytes(body)
    script = workdir / f"{name}.lua"
    script.write_text(
        f'local f = io.open("{body_file}", "rb")\n'
        'local body = f:read("*all")\nf:close()\n'
        f'wrk.method = "{method}"\n'
        f'wrk.path = "{path}"\n'
        f'wrk.headers["Content-Type"] = "{ctype}"\n'
        "if #body > 0 then wrk.body = body end\n"
    )
    return script


def scripts(workdir: Path) -> dict[str, Path]:
    png = digit_png()
    multipart = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="7.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    image = base64.urlsafe_b64encode(png).decode().rstrip("=")
    return {
        "sample": wrk_script(workdir, "sample", "POST", "/sample", b'{"n": 1}', "application/json"),
        "reconstruct": wrk_script(
            workdir,
            "reconstruct",
            "POST",
            "/reconstruct",
            multipart,
            f"multipart/form-data; boundary={BOUNDARY}",
        ),
        "encode": wrk_script(workdir, "encode", "GET", f"/encode?image={image}", b"", "text/plain"),
    }


def wrk(port: int, path: str, script: Path | None, connections: int, duration: float, cpu: int):
    """Runs wrk once (1 s warm-up first) and returns req/s, p50 and p99 in ms, and errors."""
    url = f"http://{HOST}:{port}{path}"
    base = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", "--latency"]
    base += ["--timeout", "10s"] + (["-s", str(script)] if script else [])
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True)
    out = subprocess.run(
        [*base, f"-d{duration:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    def latency_ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = sum(
        int(n)
        for n in re.findall(r"(?:Non-2xx or 3xx responses:|connect|read|write|timeout) +(\d+)", out)
    )
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "errors": errors,
    }


def baseline_worktree(ref: str, into: Path) -> Path:
    """A detached worktree of `ref` (the service as it was), removed again at the end."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(into), ref],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return into


def drop_worktree(tree: Path) -> None:
    """Removes a worktree `baseline_worktree` made, files and registration."""
    command = ["git", "worktree", "remove", "--force", str(tree)]
    subprocess.run(command, cwd=REPO, capture_output=True)


def service(
    label: str, checkpoint: Path, cwd: Path = REPO, device: str = "cpu", **env: str
) -> Peer:
    # `vae-serve`'s module in that tree: app/server/cli.py since the restructure, app/cli.py before
    cli = "app.server.cli" if (cwd / "app" / "server" / "cli.py").exists() else "app.cli"
    return Peer(
        label,
        [sys.executable, "-m", cli, "--host", HOST, "--port", "{port}"],
        env={
            "VAE_CHECKPOINT": str(checkpoint),
            "VAE_DEVICE": device,
            "VAE_LOG_LEVEL": "info",  # the access log is part of the request path we measure
            "PYTHONPATH": str(cwd),
            **env,
        },
        cwd=cwd,
        ready="/readyz",
        image_routes=True,
    )


def peers(args: argparse.Namespace, baseline: Path | None) -> list[Peer]:
    ckpt = str(args.checkpoint)
    env = {"CHECKPOINT": ckpt, "PYTHONPATH": str(REPO), "PEER_DEVICE": args.device}
    rows = [service("this service", args.checkpoint, device=args.device)]
    if "bf16" in args.rows:
        rows.append(
            service("this service, openvino-bf16", args.checkpoint, VAE_BACKEND="openvino-bf16")
        )
    if "threaded" in args.rows:
        rows.append(
            service(
                "this service, VAE_INLINE_LONE_BATCHES=off",
                args.checkpoint,
                device=args.device,
                VAE_INLINE_LONE_BATCHES="off",
            )
        )
    if baseline is not None:
        # The old build reads only checkpoint format 1: serve its own copy of the same weights.
        old_checkpoint = baseline / "models" / "mnist-vae.pt"
        rows.append(service(f"before ({args.baseline})", old_checkpoint, cwd=baseline))
    if "naive" in args.rows:
        uvicorn = [sys.executable, "-m", "uvicorn", "bench.peers.naive_server:app"]
        uvicorn += ["--host", HOST, "--port", "{port}", "--no-access-log", "--log-level", "warning"]
        rows.append(Peer("naive FastAPI (threadpool, no batching)", uvicorn, env))
    if "litserve" in args.rows:
        command = [sys.executable, "-m", "bench.peers.litserve_server", "{port}"]
        rows.append(Peer("LitServe (batching 64)", command, env, noop="/health", ready="/health"))
    if "ray" in args.rows:
        path = f"{args.ray_path}:{REPO}" if args.ray_path else str(REPO)
        ray_env = {**env, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}
        command = [sys.executable, "-m", "bench.peers.ray_server", "{port}"]
        rows.append(Peer("Ray Serve (@serve.batch 64)", command, ray_env, startup_s=300))
    return rows


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="peers-bench-"))
    lua = scripts(workdir)
    baseline = None
    if args.baseline:
        baseline = baseline_worktree(args.baseline, workdir / "baseline")
    results: dict = {"duration_s": args.duration, "rows": []}
    try:
        for peer in peers(args, baseline):
            row: dict = {"label": peer.label}
            try:
                server = Running(peer, args.server_cpu, workdir)
            except RuntimeError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
                row["skipped"] = str(exc).splitlines()[0]
                results["rows"].append(row)
                continue
            try:
                cells = [("sample", 1), ("sample", 64), ("noop", 64)]
                if peer.image_routes:
                    cells += [(e, c) for e in ("reconstruct", "encode") for c in (1, 64)]
                for route, c in cells:
                    path = peer.noop if route == "noop" else f"/{route}"
                    script = None if route == "noop" else lua[route]
                    cell = wrk(server.port, path, script, c, args.duration, args.load_cpu)
                    row[f"{route}@{c}"] = cell
                    print_cell(f"{peer.label:42} {route:11}", c, cell)
            finally:
                server.stop()
            results["rows"].append(row)
    finally:
        if baseline is not None:
            drop_worktree(baseline)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _fmt(cell: dict | None, p99: bool = False) -> str:
    if not cell:
        return "-"
    text = f"{cell['rps']:,.0f} ({cell['p50_ms']:.1f} ms"
    text += f", {cell['p99_ms']:.0f} ms)" if p99 else ")"
    return text + (f" [{cell['errors']} errors]" if cell["errors"] else "")


def report(results: dict) -> str:
    lines = [
        "| server | /sample c=1 req/s (p50) | /sample c=64 req/s (p50, p99) | no-op c=64 req/s |",
        "|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped']} | | |")
            continue
        noop = f"{row['noop@64']['rps']:,.0f}" if "noop@64" in row else "-"
        lines.append(
            f"| {row['label']} | {_fmt(row.get('sample@1'))} | "
            f"{_fmt(row.get('sample@64'), p99=True)} | {noop} |"
        )
    images = [r for r in results["rows"] if "reconstruct@1" in r]
    if images:
        lines += [
            "",
            "| server | /reconstruct c=1 | /reconstruct c=64 | /encode c=1 | /encode c=64 |",
            "|---|---|---|---|---|",
        ]
        for row in images:
            cells = [row.get(f"{e}@{c}") for e in ("reconstruct", "encode") for c in (1, 64)]
            lines.append(
                f"| {row['label']} | " + " | ".join(_fmt(x, p99=True) for x in cells) + " |"
            )
    lines += ["", *verdicts(results)]
    return "\n".join(lines)


def verdicts(results: dict) -> list[str]:
    """The issue's acceptance targets, computed from this run."""
    rows = {r["label"]: r for r in results["rows"] if "skipped" not in r}
    us = rows.get("this service")
    if not us:
        return []
    naive = next((r for k, r in rows.items() if k.startswith("naive")), None)
    lit = next((r for k, r in rows.items() if k.startswith("LitServe")), None)
    before = next((r for k, r in rows.items() if k.startswith("before")), None)
    c1, c64 = us["sample@1"], us["sample@64"]
    out = [
        f"- /sample c=1 p50 {c1['p50_ms']:.2f} ms (target <= 1.5 ms)",
        f"- /sample c=64 {c64['rps']:,.0f} req/s (target >= 1,100), "
        f"p99 {c64['p99_ms']:.0f} ms (target <= 100 ms)",
    ]
    if naive:
        out.append(
            f"- /sample c=1 vs naive: {c1['rps'] / naive['sample@1']['rps']:.2f}x (target >= 2x)"
        )
    if lit:
        out.append(
            f"- /sample c=64 vs LitServe: {c64['rps'] / lit['sample@64']['rps']:.2f}x "
            "(target >= 2x)"
        )
    if before:
        for key in (
            "sample@1",
            "sample@64",
            "reconstruct@1",
            "reconstruct@64",
            "encode@1",
            "encode@64",
        ):
            if key in before and key in us:
                out.append(f"- {key} after/before: {us[key]['rps'] / before[key]['rps']:.2f}x")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per cell")
    p.add_argument("--baseline", default=BASELINE, help="git ref of the 'before' row ('' skips)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=["bf16", "naive", "litserve", "ray"],
        help="rows besides this service: bf16 threaded (lone rows on the inference thread "
        "too) naive litserve ray",
    )
    p.add_argument(
        "--ray-path", default=os.environ.get("RAY_PATH"), help="a site dir with ray, if apart"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where every server runs its model: cpu, or cuda (the bf16 row is CPU-only)",
    )
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return p.parse_args(argv)


def run_and_report(
    name: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict],
    report: Callable[[dict], str],
) -> int:
    """A wrk bench's whole run: wrk there, the table printed, the raw results kept (`--json`)."""
    if shutil.which("wrk") is None:
        print(f"{name}: needs wrk (apt-get install -y wrk)", file=sys.stderr)
        return 2
    args.checkpoint = args.checkpoint.resolve()
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_and_report("peers_bench", parse_args(argv), run, report)


if __name__ == "__main__":
    raise SystemExit(main())
