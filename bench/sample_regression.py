"""`/sample` n=1 at c=1 and c=64, this tree against another checkout, alternating in one run.

Each server runs on `--server-cpus` from its own tree (`PYTHONPATH`), the load on the cores this
script runs on (start it with `taskset -c 1`); each tree is measured `--rounds` times, A B A B,
so drift on a shared machine falls on both. A third row runs this tree with the light lane opened
wide (`VAE_LIGHT_QUEUE_MS=2000`): the load's 64 clients send again at once after a 503, so at
c=64 the default lane refuses some of them, and each refused client waits out its `Retry-After`
(the edge holds it); the third row is the same code without that shedding. Each row's CPU per
answer is given whole and for the event loop's thread alone.

    git worktree add /tmp/base 05b2127
    taskset -c 1 .venv/bin/python bench/sample_regression.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serve_bench import Server, run_load_process

REPO = Path(__file__).resolve().parent.parent
OPEN_LANE = {"VAE_LIGHT_QUEUE_MS": "2000"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--checkpoint", type=Path, help="one checkpoint for every row (default: each tree's own)"
    )
    args = parser.parse_args()
    rows = {
        "before": (args.baseline.resolve(), {}),
        "after": (REPO, {}),
        "after, lane open": (REPO, OPEN_LANE),
    }
    ok: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    loop_cpu: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, (tree, env) in rows.items():
            checkpoint = args.checkpoint or tree / "models" / "mnist-vae.pt"
            server = Server(checkpoint, 64, "cpu", env=env, cpus=args.server_cpus, tree=tree)
            try:
                for clients in (1, 64):
                    cpu_before, loop_before = server.cpu_s(), server.loop_cpu_s()
                    r = run_load_process("sample", server.port, clients, args.duration)
                    answered = r["requests"] - r["errors"]
                    cpu_per_2xx = (server.cpu_s() - cpu_before) / max(1, answered)
                    loop_per_2xx = (server.loop_cpu_s() - loop_before) / max(1, answered)
                    ok.setdefault((name, clients), []).append(answered / args.duration)
                    cpu.setdefault((name, clients), []).append(cpu_per_2xx)
                    loop_cpu.setdefault((name, clients), []).append(loop_per_2xx)
                    print(
                        f"{name} c={clients}: {answered / args.duration:.0f} ok/s, "
                        f"{r['errors']} non-2xx, p99 {r['p99_ms']:.1f} ms, "
                        f"server CPU {1000 * cpu_per_2xx:.2f} ms per 2xx "
                        f"(event loop {1000 * loop_per_2xx:.2f})",
                        flush=True,
                    )
            finally:
                server.stop()
    for clients in (1, 64):
        before = sum(ok[("before", clients)])
        for name in ("after", "after, lane open"):
            ratio = sum(ok[(name, clients)]) / before
            cpu_ratio = sum(cpu[(name, clients)]) / sum(cpu[("before", clients)])
            loop_ratio = sum(loop_cpu[(name, clients)]) / sum(loop_cpu[("before", clients)])
            print(
                f"c={clients}: {name}/before = {ratio:.3f} ok/s, {cpu_ratio:.3f} CPU per 2xx "
                f"(event loop {loop_ratio:.3f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
