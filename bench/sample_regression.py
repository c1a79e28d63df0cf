"""`/sample` n=1 at c=1 and c=64, this tree against another checkout, alternating in one run.

Each server runs on `--server-cpus` from its own tree (`PYTHONPATH`), the load on the cores this
script runs on (start it with `taskset -c 1`); each tree is measured `--rounds` times, A B A B,
so drift on a shared machine falls on both.

    git worktree add /tmp/base 05b2127
    taskset -c 1 .venv/bin/python bench/sample_regression.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serve_bench import Server, run_load_process

REPO = Path(__file__).resolve().parent.parent


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
            checkpoint = tree / "models" / "mnist-vae.pt"
            server = Server(checkpoint, 64, "cpu", cpus=args.server_cpus, tree=tree)
            try:
                for clients in (1, 64):
                    r = run_load_process("sample", server.port, clients, args.duration)
                    rate = (r["requests"] - r["errors"]) / args.duration
                    ok.setdefault((name, clients), []).append(rate)
                    print(
                        f"{name} c={clients}: {rate:.0f} ok/s, {r['errors']} non-2xx, "
                        f"p99 {r['p99_ms']:.1f} ms",
                        flush=True,
                    )
            finally:
                server.stop()
    for clients in (1, 64):
        ratio = sum(ok[("after", clients)]) / sum(ok[("before", clients)])
        print(f"c={clients}: after/before = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
