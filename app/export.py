"""`vae-export`: a checkpoint's encode, decode and reconstruct as ONNX graphs, checked on the way.

The service exports in memory at every load (about a second), so this command is for serving the
graphs elsewhere (Triton, ONNX Runtime or OpenVINO in another language) or for looking at them
(e.g. with Netron). Each graph has a dynamic batch axis, one input named `input`, and is checked
with ONNX Runtime against eager PyTorch before it is written.

    vae-export --checkpoint models/mnist-vae.pt --out exported/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from app.backends import FP32_BOUND, GRAPHS, OnnxRuntimeRunner, TorchRunner, check, export_onnx
from models.checkpoint import CheckpointError, load_checkpoint
from training.progress import add_progress_flag, progress_bar


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/mnist-vae.pt"))
    p.add_argument("--out", type=Path, required=True, help="folder for <op>.onnx")
    add_progress_flag(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, _ = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 2
    bar = progress_bar(total=2, desc="export, check", unit="step", enabled=not args.no_progress)
    graphs = export_onnx(model)
    bar.update()
    error = check(
        OnnxRuntimeRunner(graphs, threads=1), TorchRunner(model, torch.device("cpu"), torch.float32)
    )
    bar.close()
    if not error <= FP32_BOUND:
        print(f"vae-export: the graphs differ from eager by {error:.3g}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for op, graph in graphs.items():
        path = args.out / f"{op}.onnx"
        path.write_bytes(graph)
        outputs = ", ".join(GRAPHS[op][1])
        print(f"{path}: input [batch, ...] -> {outputs} ({len(graph) / 1e6:.1f} MB)")
    print(f"max error against eager PyTorch: {error:.2g} (bound {FP32_BOUND:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
