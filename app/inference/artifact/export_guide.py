"""The digit guide's ONNX graph from an export, on ONNX Runtime (the torch-free image's guide).

Like the model's graphs, it is checked before it serves: its sha256 when a manifest beside it
lists it, that it loads, that its metadata is JSON, and that it maps digits to ten
probabilities; anything else is a `CheckpointError` (`ExportError`) with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.inference.artifact.export_format import (
    MANIFEST_NAME,
    MAX_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    ExportError,
)
from app.inference.artifact.export_manifest import parse_json, parse_manifest
from app.inference.artifact.export_reader import read_capped, read_listed
from models.checkpoint_errors import CheckpointError
from models.digit_guide import DigitGuide

NUM_DIGITS = 10


def load_onnx_guide(path: Path, candidates: int) -> DigitGuide:
    """The guide in `path`; its metadata (test accuracy) is read from the graph's own metadata."""
    if candidates < 1:
        raise ValueError("a digit needs at least one candidate")
    try:
        data = _guide_bytes(path)
    except CheckpointError as exc:
        raise ExportError(f"VAE_DIGIT_GUIDE: {exc}") from None
    return _guide_from_graph(data, path, candidates)


def onnx_guide_from_torch(guide: DigitGuide) -> DigitGuide:
    """A torch guide's network exported to the graph `vae-export` writes, on ONNX Runtime: the
    same numbers (within 1e-6) at a sixth of eager torch's time for one digit. The torch guide
    as it is where ONNX Runtime is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return guide
    from app.inference.artifact.export_writer import export_guide

    data, _ = export_guide(guide.path)
    onnx = _guide_from_graph(data, guide.path, guide.candidates)
    return DigitGuide(onnx.classify, guide.path, guide.metadata, guide.candidates, onnx.runtime)


def _guide_from_graph(data: bytes, path: Path, candidates: int) -> DigitGuide:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own types derive from Exception alone
        raise ExportError(f"VAE_DIGIT_GUIDE: {path.name} is not an ONNX graph: {exc}") from None
    stored = session.get_modelmeta().custom_metadata_map.get("metadata", "{}")
    metadata = parse_json(stored, f"VAE_DIGIT_GUIDE: {path.name}'s metadata")
    if not isinstance(metadata, dict):
        raise ExportError(f"VAE_DIGIT_GUIDE: {path.name}'s metadata is not a JSON object")

    def probabilities(images: np.ndarray) -> np.ndarray:
        return session.run(None, {"input": images})[0]

    _self_test(probabilities, path)
    return DigitGuide(probabilities, path, metadata, candidates, runtime="onnxruntime")


def _guide_bytes(path: Path) -> bytes:
    """The graph's bytes, held to its sha256 when the manifest beside it lists this file."""
    manifest_path = path.parent / MANIFEST_NAME
    if manifest_path.is_file():
        raw = read_capped(manifest_path, MAX_MANIFEST_BYTES, "manifest")
        entry = parse_manifest(raw, MANIFEST_NAME).digit_guide
        if entry is not None and entry.file == path.name:
            return read_listed(path.parent, entry, "digit_guide")
    return read_capped(path, MAX_FILE_BYTES, "digit guide")


def _self_test(probabilities: Callable[[np.ndarray], np.ndarray], path: Path) -> None:
    """Two blank digits in, two rows of ten finite probabilities out, or the guide is refused."""
    try:
        out = np.asarray(probabilities(np.zeros((2, 1, 32, 32), np.float32)))
    except Exception as exc:  # another input name or shape than a digit guide's
        raise ExportError(f"VAE_DIGIT_GUIDE: {path.name} does not run on digits: {exc}") from None
    if out.shape != (2, NUM_DIGITS) or not np.isfinite(out).all():
        raise ExportError(
            f"VAE_DIGIT_GUIDE: {path.name} gives {list(out.shape)}, not ten probabilities per digit"
        )
