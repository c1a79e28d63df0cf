"""`make gpu-check`: everything that needs a GPU, in one bounded command, one JSON and one table.

A lent GPU comes with about 15 minutes of device time, so this is the prepared script to spend it
on: at most `--budget` seconds (8 minutes) in all, each step under its own time limit and the
budget that is left, each step's failure recorded and the next step run anyway.

1. the CUDA tests (`tests/gpu`: CUDA-graph capture, parity with eager, the fp16 bound, and two
   bit-identical `--deterministic` training runs on CUDA);
2. CUDA graphs against eager PyTorch: microseconds per decode at batch 1, 16 and 64, fp32 and
   fp16, with the largest error against eager: the evidence `VAE_CUDA_GRAPHS` needs to be on;
3. `bench/serve_bench.py` on every endpoint at c=1/16/64 beside /healthz, graphs off then on;
4. `bench/peers_bench.py --device cuda` (the peers on the GPU; needs `wrk`, LitServe, Ray);
5. `bench/train_bench.py --device cuda`.

Without a GPU it says so and exits 0. The device machine has PyTorch but not the service's web
stack: a step whose packages are missing is skipped with the reason (carry them as wheels, see
/work/.library/device/README.md). MNIST comes from data/MNIST/raw, or from .gpu/mnist/*.gz as
`scripts/train_on_gpu.sh` carries it.

    python scripts/gpu_check.py --out runs/gpu-check      # writes gpu-check.json, gpu-check.md
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = ("fastapi", "uvicorn", "pydantic_settings", "multipart", "prometheus_client")


@dataclass
class Step:
    name: str
    command: list[str]
    limit_s: float
    needs: tuple[str, ...] = ()  # importable modules
    needs_programs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    json_out: Path | None = None


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed, timeout, skipped
    seconds: float = 0.0
    reason: str = ""
    output_tail: str = ""
    result: dict | list | None = None


def missing(step: Step) -> list[str]:
    gone = [m for m in step.needs if importlib.util.find_spec(m) is None]
    return gone + [p for p in step.needs_programs if shutil.which(p) is None]


def run_step(step: Step, seconds_left: float) -> Outcome:
    """One step as a subprocess, killed at its limit or when the budget runs out."""
    if absent := missing(step):
        return Outcome(step.name, "skipped", reason="missing: " + ", ".join(absent))
    limit = min(step.limit_s, seconds_left)
    if limit < 10:
        return Outcome(step.name, "skipped", reason="the time budget is spent")
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **step.env}
    try:
        done = subprocess.run(
            step.command, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit
        )
        status = "ok" if done.returncode == 0 else "failed"
        tail = (done.stdout + done.stderr)[-3000:]
        reason = "" if status == "ok" else f"exit code {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        status, reason = "timeout", f"stopped at its limit of {limit:.0f} s"
        tail = ((exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode())[-3000:]
    outcome = Outcome(step.name, status, round(time.perf_counter() - started, 1), reason, tail)
    if step.json_out and step.json_out.is_file():
        outcome.result = json.loads(step.json_out.read_text())
    return outcome


def provision_mnist() -> None:
    """data/MNIST/raw from .gpu/mnist/*.gz when the raw files are not there (no network)."""
    raw = REPO / "data" / "MNIST" / "raw"
    carried = sorted((REPO / ".gpu" / "mnist").glob("*.gz"))
    if (raw / "train-images-idx3-ubyte").is_file() or not carried:
        return
    raw.mkdir(parents=True, exist_ok=True)
    for source in carried:
        (raw / source.stem).write_bytes(gzip.decompress(source.read_bytes()))


def steps(out: Path, quick: bool) -> list[Step]:
    py = sys.executable
    duration = "0.5" if quick else "1.5"
    serve = [py, "bench/serve_bench.py", "--device", "cuda", "--duration", duration]
    serve += ["--concurrency", "1", "16", "64"]
    peers = [py, "bench/peers_bench.py", "--device", "cuda", "--baseline", ""]
    peers += ["--rows", "naive", "litserve", "ray", "--duration", "1" if quick else "3"]
    return [
        Step(  # --noconftest: tests/conftest.py needs the web stack the device machine lacks
            "cuda-tests",
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "tests/gpu"],
            100,
            needs=("pytest",),
        ),
        Step(
            "graphs-vs-eager",
            [py, "scripts/cuda_graph_timing.py", "--json", str(out / "graphs.json")],
            60,
            json_out=out / "graphs.json",
        ),
        Step(
            "serve-bench, graphs off",
            [*serve, "--json", str(out / "serve-eager.json")],
            100,
            needs=SERVICE_PACKAGES,
            env={"VAE_CUDA_GRAPHS": "false"},
            json_out=out / "serve-eager.json",
        ),
        Step(
            "serve-bench, graphs on",
            [*serve, "--json", str(out / "serve-graphs.json")],
            100,
            needs=SERVICE_PACKAGES,
            env={"VAE_CUDA_GRAPHS": "true"},
            json_out=out / "serve-graphs.json",
        ),
        Step(
            "peers-bench",
            [*peers, "--json", str(out / "peers.json")],
            80,
            needs=SERVICE_PACKAGES,
            needs_programs=("wrk", "taskset"),
            json_out=out / "peers.json",
        ),
        Step(
            "train-bench",
            [py, "bench/train_bench.py", "--device", "cuda", "--steps", "20" if quick else "200"]
            + ["--json", str(out / "train.json")],
            60,
            json_out=out / "train.json",
        ),
    ]


def serve_rows(result: dict, label: str) -> list[str]:
    """One markdown row per (mode, endpoint): req/s and p99 at each concurrency."""
    rows = []
    cells = result.get("cells", []) if isinstance(result, dict) else []
    keys = dict.fromkeys((c["mode"], c["endpoint"]) for c in cells)
    for mode, endpoint in keys:
        mine = [c for c in cells if (c["mode"], c["endpoint"]) == (mode, endpoint)]
        found = {c["concurrency"]: c for c in mine}
        parts = [
            f"{found[c]['rps']:.0f} ({found[c].get('p99_ms') or float('nan'):.1f})"
            if c in found
            else "-"
            for c in (1, 16, 64)
        ]
        rows.append(f"| {label} | {mode} | {endpoint} | " + " | ".join(parts) + " |")
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# gpu-check, {report['started']}",
        "",
        f"{report['device']}; torch {report['torch']}; commit {report['commit']}; "
        f"{report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget.",
        "",
        "| step | status | seconds | note |",
        "|---|---|---:|---|",
    ]
    for o in report["steps"]:
        lines.append(f"| {o['name']} | {o['status']} | {o['seconds']:.0f} | {o['reason']} |")
    by_name = {o["name"]: o for o in report["steps"]}
    graphs = (by_name.get("graphs-vs-eager") or {}).get("result")
    if graphs:
        lines += ["", "| dtype | batch | eager us | graphs us | speed-up | max error |"]
        lines.append("|---|---:|---:|---:|---:|---:|")
        for r in graphs["rows"]:
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['eager_us']:.0f} | {r['graphs_us']:.0f} | "
                f"{r['eager_us'] / r['graphs_us']:.2f}x | {r['max_error']:.2g} |"
            )
        lines.append(f"\nCUDA graphs right and faster: **{graphs['verdict']}**")
    serve = [
        row
        for name in ("serve-bench, graphs off", "serve-bench, graphs on")
        for row in serve_rows((by_name.get(name) or {}).get("result") or {}, name.split(", ")[1])
    ]
    if serve:
        lines += ["", "req/s (p99 ms) at c=1 / 16 / 64:", ""]
        lines += ["| graphs | mode | endpoint | c=1 | c=16 | c=64 |", "|---|---|---|--:|--:|--:|"]
        lines += serve
    train = (by_name.get("train-bench") or {}).get("result")
    if train:
        lines += ["", "| training pipeline | images/s |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in train["images_per_second"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    p.add_argument("--quick", action="store_true", help="shorter benchmark cells (a smoke run)")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no GPU here (torch.cuda.is_available() is False); nothing to check.")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    provision_mnist()
    started = time.perf_counter()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    report = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit or "unknown",
        "budget_s": args.budget,
        "steps": [],
    }
    for step in steps(args.out, args.quick):
        left = args.budget - (time.perf_counter() - started)
        outcome = run_step(step, left)
        print(f"gpu-check: {outcome.name}: {outcome.status} {outcome.reason}", flush=True)
        report["steps"].append(asdict(outcome))
    report["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    (args.out / "gpu-check.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
