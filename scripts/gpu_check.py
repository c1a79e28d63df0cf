"""The GPU work in three commands, each bounded, each useful on its own (docs/gpu.md).

A lent GPU comes with about 15 minutes of device time and at most 10 minutes a command, so each
command is planned to end within 8 minutes (`COMMAND_S`): a few seconds of set-up, then its steps
in phases (the steps of a phase run side by side), each step under its own limit and the budget
that is left. A step that overruns is stopped with its whole process group (a benchmark's
`vae-serve` too); a failure is recorded and the next step runs anyway. The report
(`gpu-COMMAND.json` and `.md` in `--out`) is rewritten after every step, and what a step makes is
copied to `--out` the moment it exists, so a command cut short still brings its results back.

- `check`: the CUDA tests (`tests/gpu`), CUDA graphs against eager (`scripts/cuda_graph_timing.py`),
  `bench/serve_bench.py` with graphs off and on, `bench/peers_bench.py` (skipped unless wrk,
  LitServe and Ray are there), `bench/train_bench.py`.
- `train`: two recipes of the default preset side by side within `--train-seconds`, and the seed
  network under both losses; each run's `best.pt` goes to `--out` as it ends, and the recipe with
  the lower validation -ELBO becomes `mnist-vae.pt` there.
- `evaluate`: the full protocol (`vae-eval --k 1000`, all 10,000 test digits, 10,000 scored
  samples) of a trained model (`--checkpoint`, else `.gpu/mnist-vae.pt` as carried, else the last
  `train` on this machine) and of the shipped `models/mnist-vae.pt` beside it.
- `plan`: each command's worst case at full size, from its steps' limits (no GPU needed).

Without a GPU each command says so and exits 0. `GPU_CHECK_REHEARSE=1` runs the same steps on the
CPU at tiny sizes instead: `make gpu-check REHEARSE=1` (scripts/gpu_rehearsal.py) does that for all
three commands, the way the device machine runs them. Steps run with this checkout first on
`PYTHONPATH`, then whatever `PYTHONPATH` held (the carried wheels' folder on the device machine).
MNIST comes from data/MNIST/raw, or from .gpu/mnist/*.gz as `scripts/gpu_wheels.sh` carries it.

    python scripts/gpu_check.py check --out runs/gpu-check    # gpu-check.json, .md, logs.tgz
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = ("fastapi", "uvicorn", "pydantic_settings", "multipart", "prometheus_client")
COMMAND_S = 480.0  # what one device command is planned to take at most (the tool allows 600)
SETUP_S = 30.0  # per command: start, torch import, wheels, MNIST unpacking, reports
MIN_STEP_S = 10.0  # a step with less time left than this is skipped, not started
COMMANDS = ("check", "train", "evaluate")
REHEARSE_ENV = "GPU_CHECK_REHEARSE"

# The commands as they are run on a lent GPU machine, in this order, from the repository's root
# (docs/gpu.md; `make gpu-check REHEARSE=1` runs these very lines on the CPU). Only `check` needs
# the web stack's wheels, installed where the device machine's own recipe puts them.
WHEELS = "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
WHEELS += "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site"
DEVICE_COMMANDS = {
    "check": f'{WHEELS} && python3 scripts/gpu_check.py check --out "$OUT"',
    "train": 'python3 scripts/gpu_check.py train --out "$OUT"',
    "evaluate": 'python3 scripts/gpu_check.py evaluate --out "$OUT"',
}


@dataclass(frozen=True)
class Sizes:
    """Everything that is smaller in a rehearsal. The steps' limits are the same in both."""

    device: str = "cuda"
    cell_s: float = 1.5  # serve_bench seconds per cell
    concurrency: tuple[str, ...] = ("1", "16", "64")
    endpoints: tuple[str, ...] = ()  # () = all of serve_bench's
    serve_env: tuple[tuple[str, str], ...] = ()  # more VAE_* settings for serve_bench's servers
    peers_s: float = 3.0
    graph_calls: int = 300
    graph_batches: tuple[str, ...] = ()  # () = cuda_graph_timing's own (1, 16, 64)
    bench_steps: int = 200
    bench_data: tuple[str, ...] = ()  # e.g. --batch-size N --warmup N
    train_s: float = 270.0  # --time-budget of each default-preset recipe
    train_data: tuple[str, ...] = ()  # e.g. --subset N --eval-limit N
    seed_epochs: int = 10
    k: int = 1000
    eval_data: tuple[str, ...] = ()  # e.g. --limit N --samples N
    seed_k: int = 100
    seed_eval_data: tuple[str, ...] = ()
    baseline_eval_data: tuple[str, ...] = ()  # the shipped model's, when a trained one is there


FULL = Sizes()
QUICK = replace(FULL, cell_s=0.5, peers_s=1.0, bench_steps=20)
TINY = Sizes(
    device="cpu",
    cell_s=0.2,
    concurrency=("1",),
    endpoints=("healthz", "sample"),
    serve_env=(("VAE_BACKEND", "torch"),),  # what `auto` picks on CUDA (the CPU's is ONNX Runtime)
    peers_s=0.5,
    graph_calls=2,
    graph_batches=("1",),
    bench_steps=2,
    bench_data=("--batch-size", "16", "--warmup", "1"),
    train_s=1.0,
    train_data=("--subset", "256", "--eval-limit", "50"),
    seed_epochs=1,
    k=10,
    eval_data=("--limit", "50", "--samples", "100"),
    seed_k=5,
    seed_eval_data=("--limit", "50", "--samples", "0"),  # the trained model's eval scores samples
    baseline_eval_data=("--limit", "50", "--samples", "0"),
)


@dataclass
class Step:
    name: str
    command: list[str]
    limit_s: float
    needs: tuple[str, ...] = ()  # importable modules
    needs_programs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    json_out: Path | None = None
    optional: bool = False  # needs what the device machine lacks unless carried: may be skipped


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed, timeout, skipped
    seconds: float = 0.0
    reason: str = ""
    output_tail: str = ""
    result: dict | list | None = None
    optional: bool = False


def missing(step: Step) -> list[str]:
    gone = [m for m in step.needs if importlib.util.find_spec(m) is None]
    return gone + [p for p in step.needs_programs if shutil.which(p) is None]


def step_env(extra: dict[str, str]) -> dict[str, str]:
    """This checkout first on PYTHONPATH, then what was there (the carried wheels' folder):
    the checkout's code, never an installed copy of it, and the wheels still found."""
    before = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join(dict.fromkeys([str(REPO), *before]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def stop_group(pgid: int, grace_s: float = 5.0) -> None:
    """SIGTERM to a step's whole process group (its servers and workers too), SIGKILL to what is
    left after `grace_s`. Nothing left: nothing to do."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class _Running:
    step: Step
    process: subprocess.Popen
    log: object  # a temporary file: no pipe for a stray grandchild to hold open
    started: float
    limit: float


def _finish(run: _Running, timed_out: bool) -> Outcome:
    stop_group(run.process.pid, grace_s=5.0 if timed_out else 1.0)
    run.process.wait()
    run.log.seek(0)
    tail = run.log.read()[-3000:].decode(errors="replace")
    run.log.close()
    seconds = round(time.monotonic() - run.started, 1)
    step = run.step
    if timed_out:
        status, reason = "timeout", f"stopped at its limit of {run.limit:.0f} s"
    elif run.process.returncode == 0:
        status, reason = "ok", ""
    else:
        status, reason = "failed", f"exit code {run.process.returncode}"
    outcome = Outcome(step.name, status, seconds, reason, tail, optional=step.optional)
    if step.json_out and step.json_out.is_file():
        try:
            outcome.result = json.loads(step.json_out.read_text())
        except ValueError as exc:
            note = f"unreadable {step.json_out.name}: {exc}"
            outcome.reason = f"{outcome.reason}; {note}" if outcome.reason else note
    return outcome


def run_phase(
    steps: list[Step],
    seconds_left: float,
    on_done: Callable[[Outcome], None] = lambda o: None,
    logs: Path | None = None,
) -> list[Outcome]:
    """The steps side by side, each a subprocess in a process group of its own (in this session,
    so that whatever ends the command's session ends them too), stopped with the group at its
    limit or when the budget runs out, or when this process is stopped; `on_done` sees each
    outcome as it comes. Each step's output goes to a file (`logs/STEP.log`, or a temporary one):
    never a pipe, which a server left behind could hold open."""
    outcomes: dict[str, Outcome] = {}
    running: list[_Running] = []
    for step in steps:
        limit = min(step.limit_s, seconds_left)
        if absent := missing(step):
            outcomes[step.name] = Outcome(
                step.name, "skipped", reason="missing: " + ", ".join(absent), optional=step.optional
            )
        elif limit < MIN_STEP_S:
            outcomes[step.name] = Outcome(
                step.name, "skipped", reason="the time budget is spent", optional=step.optional
            )
        else:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", step.name).strip("-")
            # closed by _finish, when the step is over
            log = (logs / f"{slug}.log").open("w+b") if logs else tempfile.TemporaryFile()  # noqa: SIM115
            process = subprocess.Popen(
                step.command,
                cwd=REPO,
                env=step_env(step.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
            running.append(_Running(step, process, log, time.monotonic(), limit))
            continue
        on_done(outcomes[step.name])
    try:
        while running:
            time.sleep(0.1)
            for run in list(running):
                over = time.monotonic() - run.started > run.limit
                if run.process.poll() is None and not over:
                    continue
                running.remove(run)
                outcomes[run.step.name] = _finish(run, timed_out=run.process.poll() is None)
                on_done(outcomes[run.step.name])
    finally:  # stopped (SIGTERM, Ctrl-C): no step outlives this process
        for run in running:
            stop_group(run.process.pid, grace_s=2.0)
    return [outcomes[step.name] for step in steps]


class Stopped(Exception):
    """SIGTERM: the command was told to stop (a device command past its limit, say)."""


def _stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def run_step(step: Step, seconds_left: float) -> Outcome:
    """One step alone (a phase of one)."""
    return run_phase([step], seconds_left)[0]


def provision_mnist() -> None:
    """data/MNIST/raw from .gpu/mnist/*.gz when the raw files are not there (no network)."""
    raw = REPO / "data" / "MNIST" / "raw"
    carried = sorted((REPO / ".gpu" / "mnist").glob("*.gz"))
    if (raw / "train-images-idx3-ubyte").is_file() or not carried:
        return
    raw.mkdir(parents=True, exist_ok=True)
    for source in carried:
        (raw / source.stem).write_bytes(gzip.decompress(source.read_bytes()))


# ---------------------------------------------------------------------------------------------
# The three commands' steps, in phases


def check_phases(work: Path, sizes: Sizes) -> list[list[Step]]:
    py, device = sys.executable, sizes.device
    serve = [py, "bench/serve_bench.py", "--device", device, "--duration", str(sizes.cell_s)]
    serve += ["--concurrency", *sizes.concurrency]
    serve += ["--endpoints", *sizes.endpoints] if sizes.endpoints else []
    peers = [py, "bench/peers_bench.py", "--device", device, "--baseline", ""]
    peers += ["--rows", "naive", "litserve", "ray", "--duration", str(sizes.peers_s)]
    steps = [
        Step(  # --noconftest: tests/conftest.py needs the whole test stack; and none of the
            # plugins that python3's image happens to hold (a third of the step's start-up)
            "cuda-tests",
            [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "tests/gpu"],
            85,
            needs=("pytest",),
            env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        ),
        Step(
            "graphs-vs-eager",
            [py, "scripts/cuda_graph_timing.py", "--device", device]
            + ["--calls", str(sizes.graph_calls), "--json", str(work / "graphs.json")]
            + (["--batches", *sizes.graph_batches] if sizes.graph_batches else []),
            45,
            json_out=work / "graphs.json",
        ),
        *(
            Step(
                f"serve-bench, graphs {state}",
                [*serve, "--json", str(work / f"serve-{tag}.json")],
                100,
                needs=SERVICE_PACKAGES,
                env={**dict(sizes.serve_env), "VAE_CUDA_GRAPHS": flag},
                json_out=work / f"serve-{tag}.json",
            )
            for state, tag, flag in (("off", "eager", "false"), ("on", "graphs", "true"))
        ),
        Step(
            "peers-bench",
            [*peers, "--json", str(work / "peers.json")],
            60,
            needs=(*SERVICE_PACKAGES, "litserve", "ray"),
            needs_programs=("wrk", "taskset"),
            json_out=work / "peers.json",
            optional=True,
        ),
        Step(
            "train-bench",
            [py, "bench/train_bench.py", "--device", device, "--steps", str(sizes.bench_steps)]
            + [*sizes.bench_data, "--json", str(work / "train.json")],
            45,
            json_out=work / "train.json",
        ),
    ]
    return [[step] for step in steps]  # one at a time: benchmarks do not share the GPU


RECIPES = {  # the default preset at two batch sizes; the validation digits choose between them
    "default-b128": ["--batch-size", "128", "--lr", "1e-3"],
    "default-b256": ["--batch-size", "256", "--lr", "1.5e-3"],
}
SEED_RUNS = {  # the seed network under both losses, for the model card's comparison
    "seed-mse": ["--loss", "seed-mse"],
    "seed-elbo": [],
}


def train_phases(work: Path, sizes: Sizes) -> list[list[Step]]:
    train = [sys.executable, "-m", "training", "--device", sizes.device, *sizes.train_data]
    train += ["--no-progress"]
    recipes = [
        Step(
            name,
            [*train, "--preset", "default", *flags, "--kl-warmup-epochs", "5", "--epochs", "400"]
            + ["--time-budget", str(sizes.train_s), "--out", str(work / name)],
            sizes.train_s
            + 90,  # the budget is judged after epoch 1: room for one more, and the test
        )
        for name, flags in RECIPES.items()
    ]
    seeds = [
        Step(
            name,
            [*train, "--preset", "seed", *flags, "--betas", "0.5", "0.999"]
            + ["--epochs", str(sizes.seed_epochs), "--out", str(work / name)],
            200,
        )
        for name, flags in SEED_RUNS.items()
    ]
    return [recipes + seeds]  # the GPU is launch-bound: four small runs share it well


def trained_model(work: Path, given: Path | None) -> Path | None:
    """What `evaluate` scores: --checkpoint, else the carried .gpu/mnist-vae.pt, else the model
    the last `train` on this machine chose."""
    for path in (given, REPO / ".gpu" / "mnist-vae.pt", work.parent / "train" / "mnist-vae.pt"):
        if path is not None and path.is_file():
            return path
    return None


def evaluate_phases(work: Path, sizes: Sizes, trained: Path | None) -> list[list[Step]]:
    evaluate = [sys.executable, "-m", "training.evaluate"]
    models = {"shipped": REPO / "models" / "mnist-vae.pt"} | (
        {"trained": trained} if trained else {}
    )
    steps = []
    for name, source in models.items():
        data = sizes.baseline_eval_data if name == "shipped" and trained else sizes.eval_data
        copy = work / name / "model.pt"  # --update-checkpoint writes the metrics into the copy
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        steps.append(
            Step(
                f"eval {name}",
                [*evaluate, str(copy), "--k", str(sizes.k), "--device", sizes.device]
                + [*data, "--max-decodes", "50000", "--no-progress"]
                + [
                    "--json",
                    str(work / name / "eval.json"),
                    "--out-dir",
                    str(work / name / "grids"),
                ]
                + ["--update-checkpoint"],
                240,
                json_out=work / name / "eval.json",
            )
        )
    for name in SEED_RUNS:
        model = work.parent / "train" / name / "model.pt"
        if model.is_file():
            steps.append(
                Step(
                    f"eval {name}",
                    [*evaluate, str(model), "--k", str(sizes.seed_k), "--device", sizes.device]
                    + [
                        *sizes.seed_eval_data,
                        "--no-progress",
                        "--json",
                        str(work / f"{name}.json"),
                    ],
                    240,
                    json_out=work / f"{name}.json",
                )
            )
    return [steps]


def phases_of(command: str, work: Path, sizes: Sizes, trained: Path | None = None):
    if command == "check":
        return check_phases(work, sizes)
    if command == "train":
        return train_phases(work, sizes)
    return evaluate_phases(work, sizes, trained)


def worst_case_s(phases: list[list[Step]]) -> float:
    """A command's longest run: its set-up, then each phase as long as its longest step's limit."""
    return SETUP_S + sum(max(step.limit_s for step in phase) for phase in phases)


def plan(work: Path | None = None) -> dict[str, float]:
    """Each command's worst case at full size (seconds). `evaluate` counted with a trained model
    and both seed models there: its largest form."""
    work = Path(tempfile.mkdtemp(prefix="gpu-plan-")) if work is None else work
    try:
        seeds = work / "train"
        for name in SEED_RUNS:
            (seeds / name).mkdir(parents=True, exist_ok=True)
            (seeds / name / "model.pt").touch()
        shipped = REPO / "models" / "mnist-vae.pt"
        evaluate = evaluate_phases(work / "evaluate", FULL, shipped)
        return {
            "check": worst_case_s(check_phases(work, FULL)),
            "train": worst_case_s(train_phases(work, FULL)),
            "evaluate": worst_case_s(evaluate),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# What each command brings back to --out as soon as it exists


def _small_files(root: Path) -> list[Path]:
    keep = ("*.log", "*.json", "*.jsonl", "*.csv", "*.toml", "*.png")
    return sorted({p for pattern in keep for p in root.rglob(pattern) if p.is_file()})


def _tar(out: Path, name: str, root: Path) -> None:
    """`root`'s logs, metrics and images as one tarball in `out` (the device machine brings back
    8 files at most), written beside and renamed: never half a tarball."""
    partial = out / f".{name}.partial"
    with tarfile.open(partial, "w:gz") as tar:
        for path in _small_files(root):
            tar.add(path, arcname=str(path.relative_to(root)))
    os.replace(partial, out / name)


def _run_summary(run: Path) -> dict:
    rows = []
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    best = min(rows, key=lambda r: r["val_neg_elbo"], default=None)
    summary = {"epochs": len(rows), "best": best}
    if (run / "best.pt").is_file():
        import torch

        meta = torch.load(run / "best.pt", map_location="cpu", weights_only=False)["metadata"]
        summary["best_metrics"] = meta.get("metrics", {})
    return summary


def harvest_train(out: Path, work: Path, outcome: Outcome) -> None:
    run = work / outcome.name
    if not run.is_dir():
        return
    outcome.result = _run_summary(run)
    if outcome.name in RECIPES and (run / "best.pt").is_file():
        shutil.copyfile(run / "best.pt", out / f".{outcome.name}.partial")
        os.replace(out / f".{outcome.name}.partial", out / f"{outcome.name}.pt")
    _tar(out, "runs.tgz", work)


def choose_recipe(out: Path, work: Path, report: dict) -> None:
    """The recipe with the lowest validation -ELBO becomes mnist-vae.pt (and what a later
    `evaluate` on this machine scores)."""
    scores = {
        o["name"]: o["result"]["best"]["val_neg_elbo"]
        for o in report["steps"]
        if o["name"] in RECIPES and (o.get("result") or {}).get("best")
        if (out / f"{o['name']}.pt").is_file()
    }
    report["chosen"] = min(scores, key=scores.get) if scores else None
    if report["chosen"]:
        shutil.copyfile(work / report["chosen"] / "best.pt", work / "mnist-vae.pt")
        os.replace(out / f"{report['chosen']}.pt", out / "mnist-vae.pt")


def harvest_evaluate(out: Path, work: Path, outcome: Outcome) -> None:
    if outcome.name == "eval trained" and (work / "trained" / "model.pt").is_file():
        shutil.copyfile(work / "trained" / "model.pt", out / ".mnist-vae.pt.partial")
        os.replace(out / ".mnist-vae.pt.partial", out / "mnist-vae.pt")
    _tar(out, "eval.tgz", work)


# ---------------------------------------------------------------------------------------------
# Reports


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


def _number(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def markdown(report: dict) -> str:
    lines = [
        f"# gpu-{report.get('command', 'check')}, {report['started']}",
        "",
        f"{report['device']}; torch {report['torch']}; commit {report['commit']}; "
        f"{report['seconds']:.0f} s of a {report['budget_s']:.0f} s budget"
        + ("; a rehearsal on the CPU at tiny sizes" if report.get("rehearsal") else "")
        + ".",
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
    runs = [o for o in report["steps"] if (o.get("result") or {}).get("epochs") is not None]
    if runs:
        lines += ["", "| run | epochs | best val -ELBO | at epoch | test -ELBO of best.pt |"]
        lines.append("|---|---:|---:|---:|---:|")
        for o in runs:
            best, metrics = o["result"]["best"] or {}, o["result"].get("best_metrics", {})
            lines.append(
                f"| {o['name']} | {o['result']['epochs']} | {_number(best.get('val_neg_elbo'))} "
                f"| {best.get('epoch', '-')} | {_number(metrics.get('test_neg_elbo'))} |"
            )
        lines.append(f"\nChosen on the validation digits: **{report.get('chosen')}**")
    evals = [o for o in report["steps"] if o["name"].startswith("eval ") and o.get("result")]
    if evals:
        lines += ["", "| model | prior | K | test digits | IWAE NLL | -ELBO | N(0, I) NLL |"]
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for o in evals:
            r = o["result"]
            lines.append(
                f"| {o['name'][5:]} | {r.get('prior', '-')} | {r.get('iwae_k', '-')} | "
                f"{r.get('test_images', '-')} | {_number(r.get('iwae_nll'))} | "
                f"{_number(r.get('neg_elbo'))} | {_number(r.get('iwae_nll_standard_prior'))} |"
            )
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    """gpu-COMMAND.json and .md, each replaced whole (a cut-off command leaves the last one)."""
    name = f"gpu-{report.get('command', 'check')}"
    for suffix, text in ((".json", json.dumps(report, indent=1) + "\n"), (".md", markdown(report))):
        partial = out / f".{name}{suffix}.partial"
        partial.write_text(text)
        os.replace(partial, out / f"{name}{suffix}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="check", choices=(*COMMANDS, "plan"))
    p.add_argument("--out", type=Path, default=None, help="results (default runs/gpu-COMMAND)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "gpu", help="scratch files")
    p.add_argument(
        "--budget", type=float, default=COMMAND_S - SETUP_S, help="seconds for all steps together"
    )
    p.add_argument("--quick", action="store_true", help="shorter benchmark cells (a smoke run)")
    p.add_argument("--train-seconds", type=float, default=None, help="each recipe's time budget")
    p.add_argument("--checkpoint", type=Path, default=None, help="what `evaluate` scores")
    args = p.parse_args(argv)
    if args.command == "plan":
        for command, seconds in plan().items():
            print(f"{command}: at most {seconds:.0f} s (planned <= {COMMAND_S:.0f} s)")
        return 0
    rehearsal = os.environ.get(REHEARSE_ENV) == "1"
    sizes = TINY if rehearsal else (QUICK if args.quick else FULL)
    if args.train_seconds:
        sizes = replace(sizes, train_s=args.train_seconds)
    import torch

    if not rehearsal and not torch.cuda.is_available():
        print("gpu-check: no GPU here (torch.cuda.is_available() is False); nothing to check.")
        return 0
    out = args.out or REPO / "runs" / f"gpu-{args.command}"
    work = args.work / args.command
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    provision_mnist()
    started = time.monotonic()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    trained = trained_model(args.work / args.command, args.checkpoint)
    report = {
        "command": args.command,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit or "unknown",
        "budget_s": args.budget,
        "rehearsal": rehearsal,
        "steps": [],
        "seconds": 0.0,
    }
    if args.command == "evaluate":
        report["trained_model"] = str(trained) if trained else None

    def done(outcome: Outcome) -> None:
        if args.command == "train" and outcome.status != "skipped":
            harvest_train(out, work, outcome)
        if args.command == "evaluate" and outcome.status != "skipped":
            harvest_evaluate(out, work, outcome)
        if args.command == "check" and outcome.status != "skipped":
            _tar(out, "logs.tgz", work)
        print(f"gpu-check: {outcome.name}: {outcome.status} {outcome.reason}", flush=True)
        report["steps"].append(asdict(outcome))
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report(out, report)

    signal.signal(signal.SIGTERM, _stopped)
    try:
        for phase in phases_of(args.command, work, sizes, trained):
            run_phase(phase, args.budget - (time.monotonic() - started), done, logs=work)
    except (Stopped, KeyboardInterrupt):
        report["stopped"] = "by a signal, before every step had run"
        report["seconds"] = round(time.monotonic() - started, 1)
        write_report(out, report)
        print("gpu-check: stopped; the steps that ended are in the report", file=sys.stderr)
        return 130
    if args.command == "train":
        choose_recipe(out, work, report)
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(out, report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
