"""Issue 30's cost on real servers: `vae-serve` with and without the typicality score, interleaved.

    taskset -c 1 .venv/bin/python bench/typicality_server_cost.py [--rounds 12] [--duration 3]
        [--upload mnist|drawing|photo]

`bench/typicality_cost.py` times the score in one process through FastAPI's TestClient; this
starts two `vae-serve` processes on `--server-cpus` (one core by default, as a one-core server
runs): the shipped checkpoint as it serves ("with": the four terms, the digit guide's pass
included) and the same checkpoint written again without its calibration ("without": answers carry
no score, as for a checkpoint from before issue 30). The load runs on the cores this script runs
on. Each round measures `/encode` (a 28x28 PNG in the query) and `/reconstruct` (the same PNG
uploaded) at `--concurrency` on both, in turn, the order alternating, and reads each server's CPU
time per answer; the ratio per round is with / without, and the table gives their median.
`--upload` picks what is sent: `mnist` (the default, the cheapest upload there is, so where the
score weighs most), `drawing` (the same digit as the web page's 280x280 pad sends it: a PNG,
white ink on black) or `photo` (a 640x480 JPEG of it on paper, `harness.photo_scenes`); the
last two go to `POST /encode` as uploads.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from serve_bench import Server, digit_png, run_load_process

from harness.photo_scenes import clean_page
from models.checkpoint import model_from_payload, read_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "mnist-vae.pt"
ROUTES = ("encode", "reconstruct")
OPEN_LANE = {"VAE_LIGHT_QUEUE_MS": "2000"}  # at c=8 and up nothing is refused


def without_calibration(checkpoint: Path, out: Path) -> Path:
    """`checkpoint` written again with the same weights, metadata and prior, and no score."""
    payload = read_checkpoint(checkpoint)
    model = model_from_payload(payload)
    return save_checkpoint(out, model, payload["metadata"], prior=payload.get("prior"))


def upload_file(kind: str, folder: Path) -> Path | None:
    """The upload of `kind` written into `folder`; None for `mnist` (the load's own default)."""
    if kind == "mnist":
        return None
    digit = np.asarray(Image.open(io.BytesIO(digit_png())).convert("L"))
    if kind == "photo":
        path = folder / "photo.jpg"
        path.write_bytes(clean_page(digit))
        return path
    path = folder / "drawing.png"
    Image.fromarray(digit).resize((280, 280), Image.BILINEAR).save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--upload", choices=("mnist", "drawing", "photo"), default="mnist")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        plain = without_calibration(args.checkpoint, Path(scratch) / "without.pt")
        upload = upload_file(args.upload, Path(scratch))
        rows = {"with": args.checkpoint, "without": plain}
        servers: dict[str, Server] = {}
        cpu: dict[tuple[str, str, int], list[float]] = {}
        try:
            for name, path in rows.items():  # one by one: those started are stopped if one fails
                servers[name] = Server(path, 64, "cpu", env=OPEN_LANE, cpus=args.server_cpus)
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(servers)[::-1]
                for name in order:
                    server = servers[name]
                    for route in ROUTES:
                        for clients in args.concurrency:
                            before = server.cpu_s()
                            load = run_load_process(
                                route, server.port, clients, args.duration, upload
                            )
                            answered = load["requests"] - load["errors"]
                            per_answer = (server.cpu_s() - before) / max(1, answered)
                            cpu.setdefault((name, route, clients), []).append(per_answer)
                print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    print(
        f"\n{args.rounds} rounds x {args.duration:g} s per cell, {args.upload} uploads; "
        "server CPU per answer, ms"
    )
    print("| route | clients | without | with | with / without (median of rounds) |")
    print("|---|---|---|---|---|")
    for route in ROUTES:
        for clients in args.concurrency:
            with_, without = cpu[("with", route, clients)], cpu[("without", route, clients)]
            ratio = statistics.median(w / o for w, o in zip(with_, without, strict=True))
            print(
                f"| /{route} | {clients} | {1000 * statistics.median(without):.2f} | "
                f"{1000 * statistics.median(with_):.2f} | {ratio:.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
