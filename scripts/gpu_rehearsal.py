"""`make gpu-check REHEARSE=1`: the device commands of docs/gpu.md, rehearsed on the CPU.

They run as the lent GPU machine runs them: in a copy of the working tree (tracked files and the
untracked ones git does not ignore) with the carried `.whl/` and `.gpu/mnist/`, under a `python3`
that sees only the distributions that machine's has (`gpu_device_packages.txt`; not this venv, not
the project's editable install), the web stack carried as wheels (`gpu_wheels.txt`, here repacked
from this venv for this Python) and installed by the command's own recipe, each command with a
fresh `$OUT`. `GPU_CHECK_REHEARSE=1` makes the sizes tiny and the device the CPU. Only what needs
CUDA differs: the CUDA tests skip, an eager runner stands in for the CUDA graphs, and training
runs without bf16 autocast.

It fails (exit 1) when a command exits non-zero; a step fails, overruns, or is skipped for a
reason other than an optional step's missing packages; `$OUT` breaks the device tool's limits on
what comes back (8 files, 16 MiB each, 64 MiB in all, 2 folders down, plain names); or a command's
worst case at full size (`gpu_check.plan`, from its steps' limits) is over 8 minutes.

    python scripts/gpu_rehearsal.py --out runs/gpu-rehearsal      # writes rehearsal.json there
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402

REPO = gpu_check.REPO
HERE = Path(__file__).resolve().parent
MIB = 1 << 20
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names_in(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _distributions() -> dict[str, importlib.metadata.Distribution]:
    """This interpreter's distributions by canonical name, the first on sys.path winning."""
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        found.setdefault(canonical(dist.metadata["Name"] or ""), dist)
    return found


def _top_levels(dist: importlib.metadata.Distribution) -> set[str]:
    """The entries a distribution put straight into site-packages (packages, modules, .pth
    files, its .dist-info)."""
    return {f.parts[0] for f in dist.files or () if f.parts and f.parts[0] != ".."}


def device_python(root: Path) -> Path:
    """A `python3` like the device machine's: a bare venv of this Python whose site-packages
    links only the distributions that machine has. Returns its bin/ folder."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)})
    site = Path(purelib)
    allowed = {canonical(n) for n in names_in(HERE / "gpu_device_packages.txt")}
    for name, dist in _distributions().items():
        if name not in allowed:
            continue
        source = Path(dist.locate_file(""))
        for entry in _top_levels(dist):
            target = site / entry
            if (source / entry).exists() and not target.exists() and not target.is_symlink():
                target.symlink_to(source / entry)
    return root / "bin"


def repack_wheels(dest: Path) -> list[Path]:
    """gpu_wheels.txt's distributions as this venv has them, each packed back into a wheel (its
    installed files and .dist-info), so that the device recipe's `pip install --target` runs on
    them here as it does on the downloaded ones there."""
    dest.mkdir(parents=True, exist_ok=True)
    installed, wheels = _distributions(), []
    for wanted in names_in(HERE / "gpu_wheels.txt"):
        dist = installed.get(canonical(wanted))
        if dist is None:
            raise SystemExit(f"gpu_rehearsal: {wanted} (gpu_wheels.txt) is not installed here")
        stem = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
        wheel = dest / f"{stem}-{dist.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for file in dist.files or ():
                path = Path(dist.locate_file(file))
                if file.parts[0] != ".." and "__pycache__" not in file.parts and path.is_file():
                    archive.write(path, file.as_posix())
        wheels.append(wheel)
    return wheels


def device_tree(dest: Path) -> Path:
    """What the device tool copies: the tracked files and the untracked ones git does not
    ignore (a carried folder is added on top)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)
    return dest


def carry_mnist(tree: Path, data: Path) -> None:
    """MNIST as scripts/gpu_wheels.sh carries it: .gpu/mnist/*.gz."""
    raw = data / "MNIST" / "raw"
    files = sorted(raw.glob("*-ubyte"))
    if len(files) < 4:
        raise SystemExit(f"gpu_rehearsal: no MNIST in {raw} (run the tests once, or make test)")
    (tree / ".gpu" / "mnist").mkdir(parents=True)
    for source in files:
        target = tree / ".gpu" / "mnist" / f"{source.name}.gz"
        target.write_bytes(gzip.compress(source.read_bytes(), compresslevel=1))


def out_problems(out: Path) -> list[str]:
    """What the device tool would not bring back from $OUT."""
    problems, total = [], 0
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    if len(files) > 8:
        problems.append(f"{len(files)} files in $OUT (8 come back)")
    for path in files:
        relative = path.relative_to(out)
        size = path.stat().st_size if path.is_file() else 0
        total += size
        if path.is_symlink():
            problems.append(f"{relative} is a link")
        if size > 16 * MIB:
            problems.append(f"{relative} is {size / MIB:.1f} MiB (16 come back)")
        if len(relative.parts) > 3:
            problems.append(f"{relative} is more than 2 folders down")
        if not all(NAME.match(part) for part in relative.parts):
            problems.append(f"{relative}: only letters, digits, '.', '_' and '-' come back")
    if total > 64 * MIB:
        problems.append(f"$OUT holds {total / MIB:.1f} MiB (64 come back)")
    return problems


def step_problems(report: dict) -> list[str]:
    problems = []
    for step in report.get("steps", []):
        status, reason = step["status"], step["reason"]
        if status == "ok":
            continue
        if status == "skipped" and step.get("optional") and reason.startswith("missing: "):
            continue  # as on the device machine, unless what it needs is carried
        tail = step.get("output_tail", "").strip().splitlines()[-12:]
        problems.append(f"step {step['name']}: {status} ({reason})\n      " + "\n      ".join(tail))
    return problems


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_command(name: str, tree: Path, bin_dir: Path, root: Path, limit_s: float) -> dict:
    """One device command, as the device tool runs it: bash in the tree's root, $OUT empty."""
    out = root / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = gpu_check.DEVICE_COMMANDS[name].replace("/tmp/site", str(root / "site"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        OUT=str(out),
        PYTHONDONTWRITEBYTECODE="1",
        **{gpu_check.REHEARSE_ENV: "1"},
    )
    started, cpu = time.monotonic(), _children_cpu_s()
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=limit_s)
        code = process.returncode
    except subprocess.TimeoutExpired:
        gpu_check.stop_group(process.pid)
        output, _ = process.communicate()
        code = None
    seconds = round(time.monotonic() - started, 1)
    cpu = round(_children_cpu_s() - cpu, 1)
    report_path = out / f"gpu-{name}.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    problems = []
    if code != 0:
        problems.append(
            f"exit code {code}" if code is not None else f"still running after {limit_s:.0f} s"
        )
    if not report:
        problems.append(f"no gpu-{name}.json in $OUT")
    problems += step_problems(report) + out_problems(out)
    setup_s = round(seconds - report.get("seconds", 0.0), 1)  # all but the steps' phases
    if report and setup_s > gpu_check.SETUP_S:
        problems.append(
            f"{setup_s:.0f} s outside the steps, over the {gpu_check.SETUP_S:.0f} planned"
        )
    if problems and code != 0:
        problems.append("output:\n      " + "\n      ".join(output.decode().splitlines()[-15:]))
    return {
        "command": gpu_check.DEVICE_COMMANDS[name],
        "exit_code": code,
        "seconds": seconds,
        "cpu_s": cpu,
        "setup_s": setup_s,
        "steps": {
            s["name"]: f"{s['status']} {s['reason']}".strip() for s in report.get("steps", [])
        },
        "out": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-rehearsal")
    p.add_argument("--data", type=Path, default=REPO / "data", help="where MNIST is, raw")
    p.add_argument("--limit", type=float, default=300.0, help="seconds per command, here")
    p.add_argument("--keep", action="store_true", help="keep the tree and the interpreter")
    p.add_argument(
        "--commands", nargs="+", default=list(gpu_check.COMMANDS), choices=gpu_check.COMMANDS
    )
    args = p.parse_args(argv)
    root = args.out.resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    plan = gpu_check.plan()
    result: dict = {"plan_s": plan, "commands": {}, "problems": []}
    for name, seconds in plan.items():
        if seconds > gpu_check.COMMAND_S:
            result["problems"].append(
                f"{name}: {seconds:.0f} s at full size, over {gpu_check.COMMAND_S:.0f} s"
            )
    try:
        bin_dir = device_python(root / "python")
        tree = device_tree(root / "tree")
        repack_wheels(tree / ".whl")
        carry_mnist(tree, args.data)
        result["setup_s"] = round(time.monotonic() - started, 1)
        for name in args.commands:
            ran = run_command(name, tree, bin_dir, root, args.limit)
            result["commands"][name] = ran
            result["problems"] += [f"{name}: {problem}" for problem in ran["problems"]]
            print(
                f"gpu-rehearsal: {name}: exit {ran['exit_code']} in {ran['seconds']:.0f} s "
                f"({ran['cpu_s']:.0f} CPU s) "
                f"(at full size at most {plan[name]:.0f} s); "
                + ", ".join(f"{k}: {v}" for k, v in ran["steps"].items()),
                flush=True,
            )
    finally:
        if not args.keep:
            for scratch in ("tree", "python", "site"):
                shutil.rmtree(root / scratch, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    (root / "rehearsal.json").write_text(json.dumps(result, indent=1) + "\n")
    for problem in result["problems"]:
        print(f"gpu-rehearsal: FAILED: {problem}", file=sys.stderr)
    verdict = "FAILED" if result["problems"] else "passed"
    print(f"gpu-rehearsal: {verdict} in {result['seconds']:.0f} s", flush=True)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
