"""An export (`vae-export`'s folder) made ready to serve, with no torch: ONNX Runtime runs it.

The folder holds `manifest.json` and the files it names: the three ONNX graphs, the prior's
arrays (`prior.npz`), the recorded check (`check.npz`: fixed inputs and eager PyTorch's outputs
for them) and the digit guide's graph. Each is listed with its sha256, and is read only if it is a
plain file next to the manifest, within the size limit, with that hash. At load the runner must
reproduce the recorded outputs within its bound, the check the full image makes against eager
PyTorch, so a torch-free server serves what the full one would or refuses to start.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.inference.backends.base import BackendInfo, Runner, check_against
from app.inference.backends.onnx import OnnxRuntimeRunner
from app.inference.served import ArtifactInfo, LoadedModel, file_identity, warm_up
from models.checkpoint_errors import CheckpointError
from models.digit_guide import DigitGuide
from models.prior_arrays import PriorFileError, load_npz
from models.torch_rng import TorchCompatibleGenerator

FORMAT_NAME = "mnist-vae-export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_FILE_BYTES = 1 << 30  # as a reloaded checkpoint (app/routes/checkpoint_paths.py)
MAX_MANIFEST_BYTES = 1 << 20
GRAPH_OPS = ("encode", "decode", "reconstruct")
CHECK_OUTPUTS = {"encode": 2, "decode": 1, "reconstruct": 4}


@dataclass(frozen=True)
class Export:
    """A manifest and the verified bytes of every file it names."""

    path: Path
    manifest: dict[str, Any]
    sha256: str  # of the manifest itself
    files: dict[str, bytes]  # by role: encode, decode, reconstruct, prior, check


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, refused when it is not one or is over `limit` bytes."""
    try:
        info = os.stat(path)
    except OSError:
        raise CheckpointError(f"{what} {path.name} not found") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{what} {path.name} is not a regular file")
    if info.st_size > limit:
        raise CheckpointError(f"{what} {path.name} is over the {limit} byte limit")
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"{what} {path.name} is over the {limit} byte limit")
    return data


def read_listed(folder: Path, entry: Any, role: str) -> bytes:
    """The bytes of a file the manifest lists as {"file": name, "sha256": hex}, checked: a plain
    name in the manifest's folder (no path, no link out of it), its size and its hash."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise CheckpointError(f"the manifest's {role!r} entry has no file name")
    name = entry["file"]
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise CheckpointError(f"the manifest's {role!r} file must be a plain name, not {name!r}")
    path = folder / name
    if Path(os.path.realpath(path)).parent != Path(os.path.realpath(folder)):
        raise CheckpointError(f"the manifest's {role!r} file {name!r} leads out of its folder")
    data = _read_capped(path, MAX_FILE_BYTES, role)
    if sha256_of(data) != entry.get("sha256"):
        raise CheckpointError(f"{name} does not match its sha256 in the manifest")
    return data


def read_export(path: Path) -> Export:
    """Reads and verifies a manifest and its files; `CheckpointError` says what is wrong."""
    raw = _read_capped(path, MAX_MANIFEST_BYTES, "manifest")
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path.name} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path.name} is not a {FORMAT_NAME} manifest (see vae-export)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has format version {manifest.get('format_version')!r}; "
            f"this build reads version {FORMAT_VERSION}"
        )
    folder = path.parent
    graphs = manifest.get("graphs") or {}
    files = {op: read_listed(folder, graphs.get(op), op) for op in GRAPH_OPS}
    files["prior"] = read_listed(folder, manifest.get("prior"), "prior")
    files["check"] = read_listed(folder, manifest.get("check"), "check")
    return Export(path, manifest, sha256_of(raw), files)


def load_export(
    path: Path, device: str, max_batch_size: int, *, backend: str, threads: int
) -> LoadedModel:
    """Loads, checks and warms an export (see the module's docstring)."""
    if device not in ("auto", "cpu"):
        raise CheckpointError(f"an export serves on the CPU only, not on {device!r}")
    before = file_identity(path)
    export = read_export(path)
    if file_identity(path) != before:
        raise CheckpointError(f"{path} changed while it was being loaded; try again")
    manifest = export.manifest
    try:
        latent_dim = int(manifest["latent_dim"])
        source_sha256 = str(manifest["source"]["sha256"])
        prior = load_npz(_as_file(export.files["prior"]))
        cases = _check_cases(export.files["check"])
    except (KeyError, TypeError, ValueError, PriorFileError) as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    runner = _build_runner(backend, {op: export.files[op] for op in GRAPH_OPS}, threads)
    try:
        error = check_against(runner, cases)
        warm_up(runner, latent_dim, (1, 8, max_batch_size))
    except Exception as exc:  # a graph that does not run here
        raise CheckpointError(f"{path.name}: the graphs do not run here: {exc}") from exc
    if not error <= runner.bound:
        raise CheckpointError(
            f"{path.name}: {runner.name} differs from the recorded eager outputs by "
            f"{error:.3g}, over its bound {runner.bound:g}"
        )
    import onnxruntime

    return LoadedModel(
        metadata=dict(manifest.get("metadata") or {}),
        checkpoint=path,
        sha256=source_sha256,
        config=dict(manifest.get("config") or {}),
        latent_dim=latent_dim,
        device="cpu",
        dtype="float32",
        runner=runner,
        backend=BackendInfo(backend, runner.name, runner.precision, error, runner.bound),
        prior=prior,
        artifact=ArtifactInfo(
            "onnx-export", str(path), export.sha256, f"onnxruntime {onnxruntime.__version__}"
        ),
        random=TorchCompatibleGenerator,
    )


def _build_runner(backend: str, graphs: dict[str, bytes], threads: int) -> Runner:
    if backend in ("auto", "onnxruntime"):
        return OnnxRuntimeRunner(graphs, threads)
    if backend in ("openvino", "openvino-bf16"):
        try:
            from app.inference.backends.openvino import OpenVinoRunner
        except ImportError as exc:
            raise CheckpointError(f"VAE_BACKEND={backend}: OpenVINO is not installed") from exc
        return OpenVinoRunner(graphs, threads, reduced=backend == "openvino-bf16")
    raise CheckpointError(f"VAE_BACKEND={backend} cannot serve an export; use onnxruntime")


def _as_file(data: bytes):
    import io

    return io.BytesIO(data)


def _check_cases(data: bytes) -> list[tuple[str, np.ndarray, list[np.ndarray]]]:
    """check.npz: `<op>.<k>.input` and `<op>.<k>.output<i>` arrays -> (op, input, outputs)."""
    with np.load(_as_file(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    cases = []
    for key in sorted(k for k in arrays if k.endswith(".input")):
        op, k, _ = key.split(".")
        outputs = [arrays[f"{op}.{k}.output{i}"] for i in range(CHECK_OUTPUTS[op])]
        cases.append((op, arrays[key], outputs))
    if not cases:
        raise ValueError("check.npz holds no cases")
    return cases


def load_onnx_guide(path: Path, candidates: int) -> DigitGuide:
    """The digit guide's ONNX graph on ONNX Runtime; when a manifest lies beside it and lists it,
    its sha256 must match. Its metadata (test accuracy) is read from the graph's own metadata."""
    import onnxruntime as ort

    if candidates < 1:
        raise ValueError("a digit needs at least one candidate")
    manifest_path = path.parent / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = json.loads(_read_capped(manifest_path, MAX_MANIFEST_BYTES, "manifest"))
        entry = manifest.get("digit_guide") or {}
        data = (
            read_listed(path.parent, entry, "digit_guide")
            if entry.get("file") == path.name
            else _read_capped(path, MAX_FILE_BYTES, "digit guide")
        )
    else:
        data = _read_capped(path, MAX_FILE_BYTES, "digit guide")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckpointError(f"VAE_DIGIT_GUIDE: {path.name} is not an ONNX graph: {exc}") from exc
    stored = session.get_modelmeta().custom_metadata_map.get("metadata", "{}")
    metadata = json.loads(stored)

    def probabilities(images: np.ndarray) -> np.ndarray:
        return session.run(None, {"input": images})[0]

    return DigitGuide(probabilities, path, metadata, candidates, runtime="onnxruntime")
