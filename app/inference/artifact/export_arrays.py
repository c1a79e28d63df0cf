"""An export's arrays, `prior.npz` and `check.npz`, read into what the loader may trust.

numpy and zipfile raise a dozen exception types on a damaged .npz, and an intact one can still
hold arrays of another latent size or dtype that would load and then fail `/sample`; each is
refused here with `ExportError` and one line instead.
"""

from __future__ import annotations

import io

import numpy as np

from app.inference.artifact.export_format import (
    CHECK_OUTPUTS,
    GRAPH_OPS,
    IMAGE_SHAPE,
    ExportError,
)
from app.inference.backends.base import Case
from models import typicality as typicality_arrays
from models.prior import Prior, PriorError
from models.prior_npz import NPZ_READ_ERRORS, load_npz


def read_prior(data: bytes, name: str, latent_dim: int) -> Prior:
    """The prior in `data` (the file `name`), of the model's latent size; whether it can be
    drawn from is what every prior is checked for when it is made (`models.prior`)."""
    buffer = io.BytesIO(data)
    buffer.name = name  # how `load_npz` names it in its reasons
    try:
        prior = load_npz(buffer)
    except PriorError as exc:
        reason = str(exc)
        raise ExportError(reason if reason.startswith(name) else f"{name}: {reason}") from None
    if prior.dim != latent_dim:
        raise ExportError(f"{name}: a prior of {prior.dim} dimensions, latents have {latent_dim}")
    return prior


def read_typicality(data: bytes, name: str, prior: Prior) -> typicality_arrays.Typicality:
    """The calibration in `data` (the file `name`), made with this export's `prior`."""
    buffer = io.BytesIO(data)
    buffer.name = name
    try:
        return typicality_arrays.load_npz(buffer, prior)
    except typicality_arrays.TypicalityError as exc:
        reason = str(exc)
        raise ExportError(reason if reason.startswith(name) else f"{name}: {reason}") from None


def read_check(data: bytes, name: str, latent_dim: int) -> list[Case]:
    """`<op>.<k>.input` and `<op>.<k>.output<i>` arrays -> (op, input, outputs), at least one
    case for each graph, with the shapes the graphs take."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except NPZ_READ_ERRORS as exc:
        raise ExportError(f"{name} is not a readable .npz: {exc!r}") from None
    rows = {"encode": IMAGE_SHAPE, "decode": (latent_dim,), "reconstruct": IMAGE_SHAPE}
    cases: list[Case] = []
    for key in sorted(k for k in arrays if k.endswith(".input")):
        op, _, case = key.removesuffix(".input").partition(".")
        if op not in CHECK_OUTPUTS or not case or "." in case:
            raise ExportError(f"{name}: {key!r} is not <operation>.<case>.input")
        x = _floats(arrays[key], key, name)
        if x.ndim < 1 or x.shape[1:] != rows[op] or len(x) < 1:
            shape = "x".join(map(str, ("N", *rows[op])))
            raise ExportError(f"{name}: {key} is {list(x.shape)}, not [{shape}] (N >= 1)")
        outputs = []
        for i in range(CHECK_OUTPUTS[op]):
            out_key = f"{op}.{case}.output{i}"
            if out_key not in arrays:
                raise ExportError(f"{name}: {key} has no recorded {out_key}")
            out = _floats(arrays[out_key], out_key, name)
            if out.ndim < 1 or len(out) != len(x):
                raise ExportError(f"{name}: {out_key} has not one row per input row")
            outputs.append(out)
        cases.append((op, x, outputs))
    missing = [op for op in GRAPH_OPS if not any(c[0] == op for c in cases)]
    if missing:
        raise ExportError(f"{name} records no check of {', '.join(missing)}")
    return cases


def _floats(array: np.ndarray, key: str, name: str) -> np.ndarray:
    if array.dtype.kind != "f" or not np.isfinite(array).all():
        raise ExportError(f"{name}: {key} must hold finite floats, not {array.dtype}")
    return array
