"""The export's format, in one place: what `vae-export` writes (`export_writer`) and what the
torch-free server reads (`export_reader` and the modules it uses) agree on through these names.

An export is a folder: `manifest.json` (`FORMAT_NAME`, `FORMAT_VERSION`) and the files it lists,
each with its sha256: one ONNX graph per operation in `GRAPH_OPS`, the prior's arrays, the
recorded check (each case's input and eager PyTorch's outputs, under `check_key`'s names), the
digit guide's graph and the typicality calibration. Anything the reader refuses is an
`ExportError` with one line.
"""

from __future__ import annotations

import hashlib

from models.checkpoint_errors import CheckpointError

FORMAT_NAME = "mnist-vae-export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
EXPORT_SUFFIX = ".json"  # an export is served by naming its manifest
GRAPH_OPS = ("encode", "decode", "reconstruct")
PRIOR_FILE = "prior.npz"  # models.prior_npz
CHECK_FILE = "check.npz"
GUIDE_FILE = "digit-guide.onnx"
TYPICALITY_FILE = "typicality.npz"  # the "is this a digit?" calibration (models.typicality)
CHECK_OUTPUTS = {"encode": 2, "decode": 1, "reconstruct": 4}  # outputs recorded per operation
IMAGE_SHAPE = (1, 32, 32)  # what the graphs take and give per row
MAX_FILE_BYTES = 1 << 30  # as a reloaded checkpoint (app/routes/checkpoint_paths.py)
MAX_MANIFEST_BYTES = 1 << 20
MAX_REASON_CHARS = 400


def graph_file(op: str) -> str:
    """The file of one operation's graph."""
    return f"{op}.onnx"


def check_key(op: str, case: int, output: int | None = None) -> str:
    """A recorded check's array: `<op>.<case>.input`, or its `output<i>`."""
    return f"{op}.{case:02d}." + ("input" if output is None else f"output{output}")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ExportError(CheckpointError):
    """A damaged or malformed export, in one line: a `CheckpointError`, so `vae-serve` prints it
    and exits with 2, and `/admin/reload` answers 409 with it while the old model serves on."""

    def __init__(self, reason: object) -> None:
        super().__init__(one_line(reason))


def one_line(reason: object, limit: int = MAX_REASON_CHARS) -> str:
    """`reason` as one line of at most `limit` characters (runtimes' messages span many)."""
    flat = " ".join(str(reason).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
