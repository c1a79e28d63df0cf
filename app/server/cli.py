"""`vae-serve`: check the checkpoint, then run uvicorn behind the edge (`app.server.shutdown`).

`VAE_*` variables configure the rest; see `app.config.Settings`.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from app import tracing
from app.config import Settings, configuration_error
from app.inference.artifact.loading import check_digit_guide, check_servable
from app.server.shutdown import serve
from models.checkpoint_errors import CheckpointError
from models.device_errors import CudaUnavailable

CPU_INSTEAD = (
    "to serve on the CPU instead: VAE_DEVICE=cpu "
    "(with compose: docker compose -f docker-compose.cpu.yml up -d)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-serve", description="Serve the MNIST VAE over HTTP.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes; each loads the model")
    p.add_argument("--checkpoint", default=None, help="overrides VAE_CHECKPOINT")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.checkpoint:
        os.environ["VAE_CHECKPOINT"] = args.checkpoint
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"vae-serve: invalid configuration: {configuration_error(exc)}", file=sys.stderr)
        return 2
    try:
        check_servable(settings.checkpoint, settings.device, settings.backend)
        check_digit_guide(settings)
        tracing.check()
    except CudaUnavailable as exc:  # e.g. compose's VAE_DEVICE=cuda on a host whose driver is old
        print(f"vae-serve: cannot serve: {exc}; {CPU_INSTEAD}", file=sys.stderr)
        return 2
    except (CheckpointError, RuntimeError) as exc:  # TracingConfigError is a RuntimeError
        print(f"vae-serve: cannot serve: {exc}", file=sys.stderr)
        return 2
    serve(settings, host=args.host, port=args.port, workers=args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
