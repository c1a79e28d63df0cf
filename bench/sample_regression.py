"""`/sample` n=1 at c=1 and c=64, this tree against another checkout, alternating in one run.

Each server runs on `--server-cpus` from its own tree (`PYTHONPATH`), the load on the cores this
script runs on (start it with `taskset -c 1`); each tree is measured `--rounds` times, A B A B,
so drift on a shared machine falls on both.

    git worktree add /tmp/base 05b2127
    taskset -c 1 .venv/bin/python bench/sample_regression.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from http_client import HOST, answers_200
from serve_bench import free_port, run_load_process

REPO = Path(__file__).resolve().parent.parent


def serve(tree: Path, cpus: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "VAE_CHECKPOINT": str(tree / "models" / "mnist-vae.pt"),
        "VAE_LOG_LEVEL": "warning",
        "VAE_DEVICE": "cpu",
    }
    cli = [sys.executable, "-m", "app.server.cli", "--host", HOST, "--port", str(port)]
    process = subprocess.Popen(
        ["taskset", "-c", cpus, *cli], cwd=tree, env=env, stdout=subprocess.DEVNULL
    )
    while not answers_200(port, "/readyz"):
        if process.poll() is not None:
            raise SystemExit(f"the server from {tree} did not start")
        time.sleep(0.2)
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trees = {"before": args.baseline.resolve(), "after": REPO}
    ok: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            process, port = serve(tree, args.server_cpus)
            try:
                for clients in (1, 64):
                    r = run_load_process("sample", port, clients, args.duration)
                    rate = (r["requests"] - r["errors"]) / args.duration
                    ok.setdefault((name, clients), []).append(rate)
                    print(
                        f"{name} c={clients}: {rate:.0f} ok/s, {r['errors']} non-2xx, "
                        f"p99 {r['p99_ms']:.1f} ms",
                        flush=True,
                    )
            finally:
                process.terminate()
                process.wait()
    for clients in (1, 64):
        ratio = sum(ok[("after", clients)]) / sum(ok[("before", clients)])
        print(f"c={clients}: after/before = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
