"""`vae-export`: a checkpoint as what a torch-free server needs, each file with its sha256.

It writes, into one folder: the encode, decode and reconstruct ONNX graphs (a dynamic batch axis,
one input named `input`), the checkpoint's prior as arrays (`prior.npz`), the recorded check
(`check.npz`: fixed inputs with eager PyTorch's outputs, which the server reproduces at load),
the digit guide as an ONNX graph, the typicality calibration when the checkpoint has one
(`typicality.npz`), and `manifest.json`, which lists each with its sha256 and says
where the weights came from. The graphs are checked with ONNX Runtime against eager PyTorch
before anything is written. `VAE_CHECKPOINT=OUT/manifest.json` serves the folder, with or without
torch installed (the CPU image has none); the graphs also serve elsewhere (Triton, ONNX Runtime
or OpenVINO in another language) or can be looked at (e.g. with Netron).

    vae-export --checkpoint models/mnist-vae.pt --out exported/
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.inference.artifact.export_format import (
    CHECK_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    GUIDE_FILE,
    MANIFEST_NAME,
    PRIOR_FILE,
    TYPICALITY_FILE,
    check_key,
    graph_file,
    sha256_of,
)
from app.inference.backends.base import FP32_BOUND, check_against, check_cases
from app.inference.backends.eager import TorchRunner
from app.inference.backends.onnx import OnnxRuntimeRunner
from app.inference.backends.onnx_export import GRAPHS, OPSET, export_onnx
from models import typicality as typicality_arrays
from models.checkpoint import CheckpointError, file_sha256, load_checkpoint_parts
from models.classifier import GUIDE_PATH, ClassifierError, DigitClassifier, load_classifier
from models.prior_npz import save_npz
from models.progress import add_progress_flag, progress_bar


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vae-export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("models/mnist-vae.pt"))
    p.add_argument("--out", type=Path, required=True, help="folder for the files and manifest")
    p.add_argument(
        "--digit-guide",
        default=str(GUIDE_PATH),
        help="the guide classifier to export beside the model ('' for none)",
    )
    add_progress_flag(p)
    return p.parse_args(argv)


class _Probabilities(nn.Module):
    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.classifier(x), dim=1)


def export_guide(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The guide classifier as an ONNX graph images -> probabilities, its metadata inside."""
    import onnx

    classifier, metadata = load_classifier(path, device="cpu")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Probabilities(classifier).eval(),
            (torch.zeros(2, 1, 32, 32),),
            buffer,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load_from_string(buffer.getvalue())
    safe = _json_safe(metadata)
    onnx.helper.set_model_props(graph, {"metadata": json.dumps(safe)})
    return graph.SerializeToString(), safe


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _check_arrays(cases) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for k, (op, rows, outputs) in enumerate(cases):
        arrays[check_key(op, k)] = rows
        for i, out in enumerate(outputs):
            arrays[check_key(op, k, i)] = out
    return arrays


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, metadata, prior, stored_typicality = load_checkpoint_parts(args.checkpoint)
        typicality = None
        if stored_typicality is not None:
            typicality = typicality_arrays.Typicality.from_dict(stored_typicality, prior)
    except (CheckpointError, typicality_arrays.TypicalityError) as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 2
    bar = progress_bar(total=3, desc="vae-export", unit="step", enabled=not args.no_progress)
    graphs = export_onnx(model)
    bar.update()
    cases = check_cases(TorchRunner(model, torch.device("cpu"), torch.float32), model.latent_dim)
    error = check_against(OnnxRuntimeRunner(graphs, threads=1), cases)
    bar.update()
    if not error <= FP32_BOUND:
        bar.close()
        print(f"vae-export: the graphs differ from eager by {error:.3g}", file=sys.stderr)
        return 1
    prior_buffer = io.BytesIO()
    save_npz(prior, prior_buffer)
    files = {graph_file(op): graph for op, graph in graphs.items()}
    files[PRIOR_FILE] = prior_buffer.getvalue()
    files[CHECK_FILE] = _npz_bytes(_check_arrays(cases))
    if typicality is not None:
        typicality_buffer = io.BytesIO()
        typicality_arrays.save_npz(typicality, typicality_buffer)
        files[TYPICALITY_FILE] = typicality_buffer.getvalue()
    guide_entry = None
    if args.digit_guide:
        try:
            files[GUIDE_FILE], guide_metadata = export_guide(Path(args.digit_guide))
        except ClassifierError as exc:
            print(f"vae-export: --digit-guide: {exc}", file=sys.stderr)
            return 2
        guide_entry = {
            "file": GUIDE_FILE,
            "sha256": sha256_of(files[GUIDE_FILE]),
            "source": {
                "file": Path(args.digit_guide).name,
                "sha256": file_sha256(args.digit_guide),
            },
            "metadata": guide_metadata,
        }
    bar.update()
    bar.close()

    def entry(name: str) -> dict[str, str]:
        return {"file": name, "sha256": sha256_of(files[name])}

    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source": {"checkpoint": args.checkpoint.name, "sha256": file_sha256(args.checkpoint)},
        "latent_dim": model.latent_dim,
        "config": model.config.to_dict(),
        "metadata": _json_safe(metadata),
        "graphs": {op: entry(graph_file(op)) for op in graphs},
        "prior": entry(PRIOR_FILE),
        "check": {**entry(CHECK_FILE), "max_error": error, "bound": FP32_BOUND},
        "digit_guide": guide_entry,
        "typicality": entry(TYPICALITY_FILE) if typicality is not None else None,
        "exported_with": {"torch": str(torch.__version__), "onnx_opset": OPSET},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        outputs = GRAPHS[name[:-5]][1] if name[:-5] in GRAPHS else None
        what = f"input [batch, ...] -> {', '.join(outputs)} " if outputs else ""
        print(f"{args.out / name}: {what}({len(data) / 1e6:.2f} MB, sha256 {sha256_of(data)[:12]})")
    # The manifest last, so a folder with a manifest is a whole export.
    (args.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{args.out / MANIFEST_NAME}: serve it with VAE_CHECKPOINT={args.out / MANIFEST_NAME}")
    print(f"max error against eager PyTorch: {error:.2g} (bound {FP32_BOUND:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
