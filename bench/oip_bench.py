"""This service's Open Inference Protocol decoder beside KServe's and MLServer's, in one run.

The contract is the protocol's (KServe v2 REST): `POST /v2/models/mnist-vae-decoder/infer` with
`z` of shape [B, latent] FP32 answers `image` [B, 1, 32, 32] FP32, for B = 1 and 16. Every
server runs the same decoder graph (the shipped checkpoint through `vae-export`, no torch) in
ONNX Runtime with the service's session options, so what differs is the serving around it, and
the bench checks first that all of them give the same answer bit for bit.

    apt-get install -y wrk
    .venv/bin/python bench/oip_bench.py --duration 8

Rows, each server started in turn pinned to one core (`taskset -c 0`), `wrk -t1` on the other
(`taskset -c 1`), keep-alive, 1 s warm-up, then `--duration` seconds per cell:

- this service (`VAE_BACKEND=onnxruntime` on the export), its JSON codec;
- the same server with the binary tensor extension (a JSON header and raw float32, both ways);
- KServe 0.21.0's Python model server (`bench/peers/kserve_decoder.py`), one worker, no batcher;
- MLServer 1.7.1 (`bench/peers/mlserver_decoder.py`), adaptive batching up to 64 within 2 ms;
- the decoder alone, in this process on the server's core: CPU time per call at batch 1, 16, 64.

KServe and MLServer each get a venv of their own under `--venvs`, built on first use (a minute
or two each, from the package index pip is set up with) and reused after; the peers' onnxruntime
is pinned to the version this interpreter has, so the graphs run on the same build.

req/s counts 2xx answers (errors are the non-2xx: this service sheds load with 503 and
`Retry-After`, which wrk does not honour; `--service-env VAE_LIGHT_QUEUE_MS=...` moves the line).
Server CPU per request is the server process tree's utime + stime (from `/proc`) over a window
inside the measured run, divided by the 2xx answers in that window (see `measure`); overhead is
that minus one decoder call at the request's batch size (see `overhead`). Every server logs each
request as it ships: this service's access log, KServe's access and latency lines, MLServer's
access log (its default `debug`).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from http_client import HOST, print_cell
from peers.onnx_decoder import INPUT, MODEL_NAME, OUTPUT, decode, decoder_session
from peers_bench import (
    REPO,
    Peer,
    Running,
    parse_wrk,
    run_and_report,
    service,
    wrk_script,
)

from harness.processes import free_port

INFER = f"/v2/models/{MODEL_NAME}/infer"
READY = f"/v2/models/{MODEL_NAME}/ready"
HEADER_LENGTH = "Inference-Header-Content-Length"
KSERVE = "0.21.0"
MLSERVER = "1.7.1"
SHAPES = (1, 16)  # rows per request
CONCURRENCY = (1, 64)
DECODER_BATCHES = (1, 16, 64)
CHECK_SEED = 20260101  # the [16, latent] request every server answers before it is timed
ROWS = ("service", "binary", "kserve", "mlserver")
LABELS = {
    "service": "this service (JSON)",
    "binary": "this service (binary tensors)",
    "kserve": f"KServe {KSERVE} (1 worker)",
    "mlserver": f"MLServer {MLSERVER} (batching 64)",
}
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def export(checkpoint: Path, into: Path) -> Path:
    """The checkpoint as a torch-free export (the decoder graph is `decode.onnx` in it)."""
    subprocess.run(
        [sys.executable, "-m", "app.inference.artifact.export_writer", "--checkpoint"]
        + [str(checkpoint), "--out", str(into), "--digit-guide", "", "--no-progress"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
    )
    return into


def latent_dim(export_dir: Path) -> int:
    return int(json.loads((export_dir / "manifest.json").read_text())["latent_dim"])


def peer_venv(root: Path, package: str, version: str) -> Path:
    """The python of a throwaway venv with `package==version`, built once under `root`; the
    `.complete` mark keeps a half-built one from being taken for done."""
    venv = root / f"{package}-{version}"
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    print(f"oip_bench: building {venv} (once)", file=sys.stderr, flush=True)
    if subprocess.run([sys._base_executable, "-m", "venv", str(venv)]).returncode != 0:
        raise RuntimeError(f"python -m venv {venv} failed")
    ort = importlib.metadata.version("onnxruntime")  # the same build as the service's
    log = root / f"{package}-{version}.pip.log"
    with log.open("w") as out:
        pip = [str(python), "-m", "pip", "install", f"{package}=={version}"]
        done = subprocess.run([*pip, f"onnxruntime=={ort}", "numpy"], stdout=out, stderr=out)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"pip could not build {venv} (log: {log}):\n{tail}")
    (venv / ".complete").touch()
    return python


def kserve_peer(venvs: Path, onnx: Path, workdir: Path) -> Peer:
    python = peer_venv(venvs, "kserve", KSERVE)
    command = [str(python), "-m", "bench.peers.kserve_decoder", "--onnx", str(onnx)]
    command += ["--http_port", "{port}", "--enable_grpc", "false", "--workers", "1"]
    command += ["--model_name", MODEL_NAME]
    env = {"PYTHONPATH": str(REPO)}
    return Peer(LABELS["kserve"], command, env, cwd=workdir, noop=READY, ready=READY)


def mlserver_peer(venvs: Path, onnx: Path, workdir: Path) -> Peer:
    """MLServer reads its settings from files in the folder it serves (they win over MLSERVER_*
    variables); the HTTP port is `Running`'s choice, so a shell writes it into settings.json."""
    python = peer_venv(venvs, "mlserver", MLSERVER)
    folder = workdir / "mlserver"
    folder.mkdir(exist_ok=True)
    settings = {
        "host": HOST,
        "http_port": "@PORT@",
        "grpc_port": free_port(),  # it cannot be turned off
        "metrics_endpoint": None,  # no metrics server
        "parallel_workers": 0,  # the default 1 does not start with uvloop >= 0.22
        "model_repository_root": str(folder),
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "bench.peers.mlserver_decoder.Decoder",
        "max_batch_size": 64,
        "max_batch_time": 0.002,
        "parameters": {"uri": str(onnx)},
    }
    (folder / "settings.template").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    # `Running` puts its port into the command line only ($0 here), not into files.
    script = (
        'sed "s/\\"@PORT@\\"/$0/" settings.template > settings.json && '
        f"exec {python.parent / 'mlserver'} start ."
    )
    command = ["sh", "-c", script, "{port}"]
    env = {"PYTHONPATH": str(REPO)}
    return Peer(LABELS["mlserver"], command, env, cwd=folder, noop=READY, ready=READY)


def latents(rows: int, latent: int, seed: int = CHECK_SEED) -> np.ndarray:
    return np.random.default_rng(seed + rows).standard_normal((rows, latent), dtype=np.float32)


def json_body(z: np.ndarray) -> bytes:
    """An infer request as a client writes one: a flat row-major list, and an "id" (KServe
    0.21.0 answers 500 without one)."""
    tensor = {"name": INPUT, "datatype": "FP32", "shape": list(z.shape), "data": z.ravel().tolist()}
    return json.dumps({"id": "1", "inputs": [tensor]}).encode()


def binary_body(z: np.ndarray) -> tuple[bytes, int]:
    """The binary tensor extension: a JSON header, then `z` as little-endian float32; the answer
    is asked for in binary too. Returns the body and the header's length."""
    raw = np.ascontiguousarray(z, "<f4").tobytes()
    tensor = {"name": INPUT, "datatype": "FP32", "shape": list(z.shape)}
    tensor["parameters"] = {"binary_data_size": len(raw)}
    request = {"id": "1", "inputs": [tensor], "parameters": {"binary_data_output": True}}
    header = json.dumps(request).encode()
    return header + raw, len(header)


# Counts the 2xx answers that arrive between two CLOCK_MONOTONIC times (wrk's arguments after
# `--`, the clock of Python's time.monotonic), so the bench can read the server's CPU time over
# the same window; wrk's LuaJIT reads the clock through its FFI.
COUNT_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } oip_timespec;
int clock_gettime(int clock, oip_timespec *now);
]]
local now = ffi.new("oip_timespec")
local from, to = 0, 0
answered = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) from, to = tonumber(args[1]) or 0, tonumber(args[2]) or 0 end
function response(status, headers, body)
  ffi.C.clock_gettime(1, now)
  local t = tonumber(now.tv_sec) + tonumber(now.tv_nsec) * 1e-9
  if status < 300 and t >= from and t < to then answered = answered + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("answered") end
  io.write(string.format("answered in window: %d\\n", total))
end
"""


def cell_scripts(workdir: Path, latent: int) -> dict[tuple[str, int], Path]:
    """wrk scripts with fixed bodies: (JSON or binary, rows) -> script."""
    out = {}
    for rows in SHAPES:
        z = latents(rows, latent)
        out["json", rows] = wrk_script(
            workdir, f"json{rows}", "POST", INFER, json_body(z), "application/json"
        )
        body, length = binary_body(z)
        script = wrk_script(
            workdir, f"binary{rows}", "POST", INFER, body, "application/octet-stream"
        )
        with script.open("a") as f:
            f.write(f'wrk.headers["{HEADER_LENGTH}"] = "{length}"\n')
        out["binary", rows] = script
    for script in out.values():
        with script.open("a") as f:
            f.write(COUNT_LUA)
    return out


def post(port: int, body: bytes, headers: dict[str, str]) -> tuple[dict, bytes]:
    """One infer request over urllib: the JSON part of the answer, and its binary part."""
    request = urllib.request.Request(f"http://{HOST}:{port}{INFER}", body, headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
        length = int(response.headers.get(HEADER_LENGTH) or len(data))
    return json.loads(data[:length]), data[length:]


def answer(port: int, z: np.ndarray, binary: bool) -> np.ndarray:
    """The server's `image` for `z` as float32, from JSON data or from the binary part."""
    if binary:
        body, length = binary_body(z)
        headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(length)}
    else:
        body, headers = json_body(z), {"Content-Type": "application/json"}
    parsed, raw = post(port, body, headers)
    out = next(o for o in parsed["outputs"] if o["name"] == OUTPUT)
    if raw:
        return np.frombuffer(raw, "<f4").reshape(out["shape"])
    return np.asarray(out["data"], np.float64).astype(np.float32).reshape(out["shape"])


def compare(got: np.ndarray, want: np.ndarray) -> dict:
    """Equal bit for bit, or the largest absolute difference."""
    if got.shape != want.shape:
        return {"equal": False, "max_abs_diff": float("inf"), "shape": list(got.shape)}
    diff = float(np.abs(got.astype(np.float64) - want).max())
    return {"equal": bool(np.array_equal(got, want)), "max_abs_diff": diff}


def tree_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and every live descendant, each with its reaped children's
    (`cutime`, `cstime`), in seconds; this kernel has no /proc/<pid>/task/*/children, so the
    tree comes from every process's parent pid."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
        ppid, ticks = int(fields[1]), sum(int(x) for x in fields[11:15])
        stats[int(entry.name)] = (ppid, ticks * TICK_S)
    tree, total, frontier = {pid}, 0.0, [pid]
    while frontier:
        parent = frontier.pop()
        total += stats.get(parent, (0, 0.0))[1]
        children = [p for p, (pp, _) in stats.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return total


def wait_idle(pid: int, quiet_s: float = 0.3, timeout_s: float = 120.0) -> float:
    """Waits until the server tree has used under a tenth of a core for `quiet_s` (the requests
    wrk left in flight when it stopped are done: a backlog would eat into the next run), and
    returns its CPU seconds then."""
    deadline = time.monotonic() + timeout_s
    last = tree_cpu_s(pid)
    while True:
        time.sleep(quiet_s)
        now = tree_cpu_s(pid)
        if now - last < quiet_s / 10 or time.monotonic() > deadline:
            return now
        last = now


def measure(port: int, pid: int, script: Path, c: int, duration: float, cpu: int) -> dict:
    """wrk for 1 s (warm-up), the server left to finish what it was sent, then `duration` s.

    req/s, p50, p99 and errors are wrk's over the whole run, but `rps` counts 2xx answers only
    (a server that sheds load is not credited for its fast 503s; wrk's own figure is `rps_all`).
    Server CPU per request is taken inside the run, from `window_s` after it starts to as long
    before it ends: the tree's CPU seconds over that window divided by the 2xx answers wrk got
    in it (`COUNT_LUA`). Read from the start and end of the run instead, the work in flight when
    wrk stops would count and its requests would not, up to a whole batch (MLServer's batch of
    64 [16, L] requests is 1,024 rows, about a second) against servers that batch.
    """
    base = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{c}", "--latency", "--timeout", "10s"]
    base += ["-s", str(script)]
    url = f"http://{HOST}:{port}{INFER}"
    subprocess.run([*base, "-d1s", url, "--", "0", "0"], capture_output=True, check=True)
    wait_idle(pid)
    window_s = min(1.0, duration / 8)
    start = time.monotonic()
    window = (start + window_s, start + duration - window_s)
    bounds = [f"{t:.6f}" for t in window]
    load = subprocess.Popen(
        [*base, f"-d{duration:g}s", url, "--", *bounds], stdout=subprocess.PIPE, text=True
    )
    first = cpu_at(pid, window[0])
    cpu_s = cpu_at(pid, window[1]) - first
    out = load.communicate()[0]
    if load.returncode:
        raise subprocess.CalledProcessError(load.returncode, load.args, out)
    return cell_from(out, duration, cpu_s, window[1] - window[0])


def cpu_at(pid: int, when: float) -> float:
    time.sleep(max(0.0, when - time.monotonic()))
    return tree_cpu_s(pid)


def cell_from(out: str, duration: float, cpu_s: float, window_s: float) -> dict:
    """One cell from wrk's output and the server CPU seconds over the counting window."""
    cell = parse_wrk(out)
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    counted = re.search(r"^answered in window: (\d+)$", out, re.M)
    requests = int(done.group(1)) if done else 0
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
    elapsed = float(done.group(2)) * scale[done.group(3)] if done else duration
    answered = requests - (int(non_2xx.group(1)) if non_2xx else 0)
    in_window = int(counted.group(1)) if counted else 0
    cell.update(
        rps_all=cell["rps"],
        rps=answered / elapsed,
        requests=requests,
        answered=answered,
        window_s=window_s,
        window_answered=in_window,
        window_cpu_s=cpu_s,
        cpu_ms_per_req=cpu_s * 1000 / in_window if in_window else float("nan"),
    )
    return cell


def decoder_alone(onnx: Path, latent: int, cpu: int, seconds: float = 1.0) -> dict[int, float]:
    """Median CPU ms of one session call at each batch size, on the server's core: what a
    server must spend on the graph, whatever it serves it with."""
    session = decoder_session(str(onnx))
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        times = {}
        for batch in DECODER_BATCHES:
            z = latents(batch, latent)
            for _ in range(20):
                decode(session, z)
            samples, stop = [], time.monotonic() + seconds
            while time.monotonic() < stop or len(samples) < 50:
                start = time.process_time_ns()
                decode(session, z)
                samples.append((time.process_time_ns() - start) / 1e6)
            times[batch] = statistics.median(samples)
        return times
    finally:
        os.sched_setaffinity(0, saved)


def servers(args: argparse.Namespace, onnx: Path, export_dir: Path, workdir: Path) -> list:
    """(row keys, how to make its Peer) in the order they run; the service's two rows share one
    start, and a peer's venv is built (once) only when its turn comes."""
    out: list[tuple[list[str], Callable[[], Peer]]] = []
    ours = [r for r in ("service", "binary") if r in args.rows]
    if ours:
        manifest = export_dir / "manifest.json"
        env = {"VAE_BACKEND": "onnxruntime", **dict(kv.split("=", 1) for kv in args.service_env)}
        ours_peer = functools.partial(service, LABELS[ours[0]], manifest, **env)
        out.append((ours, ours_peer))
    if "kserve" in args.rows:
        out.append((["kserve"], functools.partial(kserve_peer, args.venvs, onnx, workdir)))
    if "mlserver" in args.rows:
        out.append((["mlserver"], functools.partial(mlserver_peer, args.venvs, onnx, workdir)))
    return out


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="oip-bench-"))
    try:
        export_dir = export(args.checkpoint, workdir / "export")
        onnx = export_dir / "decode.onnx"
        latent = latent_dim(export_dir)
        results: dict = {"duration_s": args.duration, "latent": latent, "rows": []}
        alone = decoder_alone(onnx, latent, args.server_cpu)
        results["decoder_ms"] = alone
        print(f"decoder alone, CPU ms per call: {alone}", file=sys.stderr, flush=True)
        os.sched_setaffinity(0, {args.load_cpu})  # reading /proc and waiting: off the server's core
        check_z = latents(16, latent)
        reference = decode(decoder_session(str(onnx)), check_z)
        lua = cell_scripts(workdir, latent)
        for keys, make in servers(args, onnx, export_dir, workdir):
            results["rows"] += serve_rows(args, keys, make, workdir, lua, check_z, reference)
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def serve_rows(args, keys, make, workdir, lua, check_z, reference) -> list[dict]:
    """Starts one server, checks its answer against the decoder alone, and times its cells; a
    server that cannot be built or started is a skipped row, not the end of the run."""
    rows = [{"key": k, "label": LABELS[k]} for k in keys]
    try:
        server = Running(make(), args.server_cpu, workdir)
    except RuntimeError as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        for row in rows:
            row["skipped"] = str(exc).splitlines()[0]
        return rows
    try:
        for row in rows:  # every answer before any load: a row after another's floods is shed
            try:
                answered = answer(server.port, check_z, row["key"] == "binary")
                row["answer"] = compare(answered, reference)
            except (OSError, ValueError, KeyError, StopIteration) as exc:
                row["answer"] = {"equal": False, "max_abs_diff": float("nan"), "error": repr(exc)}
        for row in rows:
            codec = "binary" if row["key"] == "binary" else "json"
            for b in SHAPES:
                for c in CONCURRENCY:
                    cell = measure(
                        server.port,
                        server.process.pid,
                        lua[codec, b],
                        c,
                        args.duration,
                        args.load_cpu,
                    )
                    row[f"{b}@{c}"] = cell
                    cpu = f"CPU {cell['cpu_ms_per_req']:6.3f} ms/req  "
                    print_cell(f"{row['label']:34} [{b:>2},L]", c, cell, cpu)
    finally:
        server.stop()
    return rows


def overhead(cell: dict, rows: int, decoder_ms: dict[int, float]) -> float:
    """Server CPU per request minus one decoder call at the request's own batch size (batch 1
    for [1, L], batch 16 for [16, L]), whether or not the server merged it into a larger batch:
    on this CPU the graph's time per row hardly changes from batch 1 to 64 (the batch-64 time is
    in the table), so merging saves the servers that batch little graph time either way."""
    return cell["cpu_ms_per_req"] - decoder_ms[rows]


def _rps(cell: dict | None, p99: bool = False) -> str:
    if not cell:
        return "-"
    if not cell["answered"]:
        return f"0 (no 2xx answer in {cell['requests']} responses)"
    text = f"{cell['rps']:,.0f}" + (f" ({cell['p99_ms']:.1f} ms)" if p99 else "")
    return text + (f" [{cell['errors']} errors]" if cell["errors"] else "")


def _ms(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def _cpu(cell: dict | None) -> str:
    return _ms(cell["cpu_ms_per_req"]) if cell else "-"


def _over(cell: dict | None, rows: int, decoder_ms: dict[int, float]) -> str:
    return _ms(overhead(cell, rows, decoder_ms)) if cell else "-"


def report(results: dict) -> str:
    latent = results["latent"]
    dec = results["decoder_ms"]
    shape = {b: f"[{b},{latent}]" for b in SHAPES}
    lines = [
        f"| server | {shape[1]} c=1 req/s | {shape[1]} c=64 req/s (p99) | {shape[16]} c=1 | "
        f"{shape[16]} c=64 (p99) | CPU ms/req {shape[1]} c=64 | overhead {shape[1]} | "
        f"CPU ms/req {shape[16]} c=64 | overhead {shape[16]} | answer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped']} |" + " |" * 8)
            continue
        a = row["answer"]
        same = "bit-equal" if a["equal"] else f"max abs diff {a['max_abs_diff']:.2g}"
        same = "not checked (see the notes)" if "error" in a else same
        lines.append(
            f"| {row['label']} | {_rps(row.get('1@1'))} | {_rps(row.get('1@64'), True)} | "
            f"{_rps(row.get('16@1'))} | {_rps(row.get('16@64'), True)} | "
            f"{_cpu(row.get('1@64'))} | {_over(row.get('1@64'), 1, dec)} | "
            f"{_cpu(row.get('16@64'))} | {_over(row.get('16@64'), 16, dec)} | {same} |"
        )
    lines.append(
        f"| decoder alone (CPU ms per call: batch 1 {dec[1]:.3f}, 16 {dec[16]:.3f}, "
        f"64 {dec[64]:.3f}) | {1000 / dec[1]:,.0f} | {64000 / dec[64]:,.0f} | "
        f"{1000 / dec[16]:,.0f} | {4000 / dec[64]:,.0f} | {dec[1]:.3f} | 0 | {dec[16]:.3f} | "
        "0 | reference |"
    )
    lines += [
        "",
        "req/s of the decoder alone: one call per request at c=1, full batches of 64 rows at "
        "c=64. Overhead: server CPU per request minus one decoder call at the request's own "
        "batch. req/s counts 2xx answers; errors are non-2xx (this service's 503s when it "
        "sheds load).",
        "",
        *verdicts(results),
    ]
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else float("nan")


def verdicts(results: dict) -> list[str]:
    """The issue's targets, computed from this run."""
    rows = {r["key"]: r for r in results["rows"] if "skipped" not in r}
    us, binary, ml = rows.get("service"), rows.get("binary"), rows.get("mlserver")
    dec = results["decoder_ms"]
    out = []

    def check(ok: bool, text: str, *values: float) -> None:
        """PASS or FAIL, or n/a where a figure is missing (a cell with no 2xx answer)."""
        known = all(math.isfinite(v) and v > 0 for v in values)
        out.append(f"- {('PASS' if ok else 'FAIL') if known else 'n/a'}: {text}")

    for row in rows.values():
        checked = row["answer"]
        if "error" in checked:
            out.append(f"- note: {row['label']} could not be checked: {checked['error']}")
        elif not checked["equal"]:
            out.append(
                f"- note: {row['label']} answers differ from the decoder alone "
                f"(max abs diff {checked['max_abs_diff']:.3g})"
            )
    if us and ml:
        for b in SHAPES:
            mine, theirs = us[f"{b}@64"], ml[f"{b}@64"]
            o_mine, o_theirs = overhead(mine, b, dec), overhead(theirs, b, dec)
            check(
                o_mine <= o_theirs / 4,
                f"[{b},L] c=64 overhead {o_mine:.3f} ms vs MLServer {o_theirs:.3f} ms "
                f"(target <= 1/4, {o_theirs / 4:.3f} ms)",
                mine["cpu_ms_per_req"],
                theirs["cpu_ms_per_req"],
            )
        for b, c, target in ((1, 64, 1.5), (16, 64, 1.2), (1, 1, 1.0), (16, 1, 1.0)):
            mine, theirs = us[f"{b}@{c}"]["rps"], ml[f"{b}@{c}"]["rps"]
            ratio = _ratio(mine, theirs)
            text = f"[{b},L] c={c} req/s {ratio:.2f}x MLServer (target >= {target:g}x)"
            check(ratio >= target, text, mine, theirs)
    if us and binary:
        for b in SHAPES:
            for c in CONCURRENCY:
                mine, theirs = binary[f"{b}@{c}"]["rps"], us[f"{b}@{c}"]["rps"]
                ratio = _ratio(mine, theirs)
                text = f"[{b},L] c={c} binary {ratio:.2f}x JSON req/s (target >= 1x)"
                check(ratio >= 1, text, mine, theirs)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / "models" / "mnist-vae.pt")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per cell")
    p.add_argument(
        "--rows", nargs="+", default=list(ROWS), choices=ROWS, help="servers to run (all)"
    )
    p.add_argument(
        "--venvs",
        type=Path,
        default=Path.home() / ".cache" / "mnist-vae" / "bench-venvs",
        help="where the KServe and MLServer venvs are built and kept",
    )
    p.add_argument(
        "--service-env",
        nargs="+",
        default=[],
        metavar="VAE_X=VALUE",
        help="settings for this service's rows, e.g. VAE_LIGHT_QUEUE_MS=1000 (it sheds past "
        "60 ms of booked light work by default, and wrk does not honour Retry-After)",
    )
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_and_report("oip_bench", parse_args(argv), run, report)


if __name__ == "__main__":
    raise SystemExit(main())
