"""Every way an export (`vae-export`'s folder) can be damaged while the hash check still passes.

Each `Damage` turns a copy of a good export into a bad one and rewrites the manifest's sha256 of
every file it changed, so only what the reader makes of the bytes can refuse it. The copies are
hard links where a file is unchanged (18 MB per export otherwise), so a damage must never write
into a file in place: `_replace` unlinks first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
GRAPH_FILES = ("encode.onnx", "decode.onnx", "reconstruct.onnx")


@dataclass(frozen=True)
class Damage:
    """One damage: `apply(folder)` breaks the copy in `folder`."""

    name: str
    apply: Callable[[Path], None]
    reload_status: int = 409  # a missing manifest is a 404 before anything is read
    guide_only: bool = False  # only `VAE_DIGIT_GUIDE` reads it, not `VAE_CHECKPOINT`


def copy_export(good: Path, out: Path) -> Path:
    """A copy of the export's files in `out`, hard-linked (copied where links fail)."""
    out.mkdir(parents=True)
    for file in good.iterdir():
        if file.is_file():
            try:
                os.link(file, out / file.name)
            except OSError:
                shutil.copy(file, out / file.name)
    return out


def _replace(path: Path, data: bytes) -> None:
    """Writes a new file at `path`: never into the inode a hard link shares with the original."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [*manifest["graphs"].values(), manifest["prior"], manifest["check"]]
    return [*entries, manifest["digit_guide"]]


def _read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def _write_manifest(folder: Path, manifest: Any) -> None:
    _replace(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def _file(name: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Replaces file `name` with `make(its bytes)` and gives the manifest the new sha256."""

    def apply(folder: Path) -> None:
        data = make((folder / name).read_bytes())
        manifest = _read_manifest(folder)
        _replace(folder / name, data)
        for entry in _entries(manifest):
            if entry["file"] == name:
                entry["sha256"] = hashlib.sha256(data).hexdigest()
        _write_manifest(folder, manifest)

    return apply


def _manifest(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """Edits the manifest as JSON: `edit` changes it in place, or returns what replaces it."""

    def apply(folder: Path) -> None:
        manifest = _read_manifest(folder)
        result = edit(manifest)
        _write_manifest(folder, manifest if result is None else result)

    return apply


def _manifest_text(make: Callable[[str], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        _replace(folder / MANIFEST, make((folder / MANIFEST).read_text()))

    return apply


def _set(*keys: str, value: Any) -> Callable[[Path], None]:
    def edit(manifest: dict[str, Any]) -> None:
        inner = manifest
        for key in keys[:-1]:
            inner = inner[key]
        inner[keys[-1]] = value

    return _manifest(edit)


def _npz(edit: Callable[[dict[str, np.ndarray]], None]) -> Callable[[bytes], bytes]:
    """An .npz's arrays, changed by `edit`, saved again as `np.savez` does."""

    def make(data: bytes) -> bytes:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        edit(arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    return make


def _onnx(edit: Callable[[Any], None]) -> Callable[[bytes], bytes]:
    """An ONNX graph, changed by `edit` (an `onnx.ModelProto`), still a valid protobuf."""

    def make(data: bytes) -> bytes:
        import onnx

        model = onnx.load_from_string(data)
        edit(model)
        return model.SerializeToString()

    return make


def _scale_first_weights(model: Any) -> None:
    """Another model's numbers: the largest initializer scaled by 1.5."""
    from onnx import numpy_helper

    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = numpy_helper.to_array(largest) * np.float32(1.5)
    largest.CopyFrom(numpy_helper.from_array(array.astype(np.float32), largest.name))


def _rename_input(model: Any) -> None:
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        node.input[:] = ["x" if name == "input" else name for name in node.input]


def _guide_metadata(value: str) -> Callable[[Any], None]:
    def edit(model: Any) -> None:
        import onnx

        onnx.helper.set_model_props(model, {"metadata": value})

    return edit


def _swap(a: str, b: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        data_a, data_b = (folder / a).read_bytes(), (folder / b).read_bytes()
        _file(a, lambda _: data_b)(folder)
        _file(b, lambda _: data_a)(folder)

    return apply


def _copy_graph(source: str, target: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        _file(target, lambda _: (folder / source).read_bytes())(folder)

    return apply


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _make_directory(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return apply


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _drop(*keys: str) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        for key in keys:
            del arrays[key]

    return edit


def _put(key: str, value: Callable[[dict[str, np.ndarray]], Any]):
    def edit(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = value(arrays)

    return edit


def _other_latent_dim(arrays: dict[str, np.ndarray]) -> None:
    """A consistent prior of another latent size (16 where the graphs take 32)."""
    for part in ("mixture", "classes"):
        arrays[f"{part}.means"] = arrays[f"{part}.means"][:, :16].copy()
        arrays[f"{part}.scale_tril"] = arrays[f"{part}.scale_tril"][:, :16, :16].copy()


def _drop_op_cases(op: str) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(arrays: dict[str, np.ndarray]) -> None:
        for key in [k for k in arrays if k.startswith(f"{op}.")]:
            del arrays[key]

    return edit


def _shift_outputs(arrays: dict[str, np.ndarray]) -> None:
    for key in [k for k in arrays if k.startswith("decode.") and ".output" in k]:
        arrays[key] = arrays[key] + np.float32(0.5)


def _rules(text: str) -> Callable[[dict[str, np.ndarray]], None]:
    return _put("rules", lambda _: np.array(text))


def _random_bytes(n: int) -> Callable[[bytes], bytes]:
    return lambda _: random.Random(n).randbytes(n)


def _head(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _tail_cut(data: bytes) -> bytes:
    return data[:-100]


def _depth_500_metadata(manifest: dict[str, Any]) -> None:
    manifest["metadata"]["notes"] = _nested(500)


DEEP = b"[" * 100_000 + b"]" * 100_000

DAMAGES = [
    # the manifest itself
    Damage("manifest-missing", _remove(MANIFEST), reload_status=404),
    Damage("manifest-not-json", _manifest_text(lambda t: t[: len(t) // 2].encode())),
    Damage("manifest-not-utf8", _manifest_text(lambda t: b"\xff\xfe\x00" + t.encode())),
    Damage("manifest-a-list", _manifest(lambda m: [m])),
    Damage("manifest-a-string", _manifest(lambda m: "mnist-vae-export")),
    Damage("manifest-100000-nested-lists", _manifest_text(lambda t: DEEP)),
    Damage(
        "manifest-int-of-5000-digits",
        _manifest_text(
            lambda t: t.replace('"latent_dim": 32', '"latent_dim": ' + "3" * 5000).encode()
        ),
    ),
    Damage("metadata-nested-500-deep", _manifest(_depth_500_metadata)),
    Damage("metadata-holds-nan", _set("metadata", "notes", value=float("nan"))),
    Damage(
        "metadata-holds-1e999",
        _manifest_text(lambda t: t.replace('"epoch": 60,', '"epoch": 1e999,', 1).encode()),
    ),
    Damage("format-version-a-string", _set("format_version", value="1")),
    # its fields, of the wrong type or missing
    Damage("graphs-a-list", _manifest(lambda m: m.update(graphs=list(m["graphs"].values())))),
    Damage("graphs-missing-decode", _manifest(lambda m: m["graphs"].pop("decode") and None)),
    Damage("graph-entry-a-string", _set("graphs", "decode", value="decode.onnx")),
    Damage("graph-file-a-number", _set("graphs", "decode", "file", value=7)),
    Damage("graph-sha256-a-number", _set("graphs", "decode", "sha256", value=7)),
    Damage("prior-entry-null", _set("prior", value=None)),
    Damage("latent-dim-a-string", _set("latent_dim", value="32")),
    Damage("latent-dim-true", _set("latent_dim", value=True)),
    Damage("latent-dim-a-float", _set("latent_dim", value=32.5)),
    Damage("latent-dim-16", _set("latent_dim", value=16)),
    Damage("latent-dim-missing", _manifest(lambda m: m.pop("latent_dim") and None)),
    Damage("source-a-string", _set("source", value="mnist-vae.pt")),
    Damage("source-sha256-a-number", _set("source", "sha256", value=12345)),
    Damage("metadata-a-list", _set("metadata", value=[1, 2])),
    Damage("metadata-a-string", _set("metadata", value="trained")),
    Damage("config-a-string", _set("config", value="abc")),
    Damage("preset-a-number", _set("metadata", "preset", value=5)),
    Damage("metrics-a-list", _set("metadata", "metrics", value=[1])),
    Damage("dataset-a-string", _set("metadata", "dataset", value="mnist")),
    Damage("digit-guide-entry-a-list", _set("digit_guide", value=[])),
    # the graphs
    Damage("decode-random-bytes", _file("decode.onnx", _random_bytes(4096))),
    Damage("encode-truncated", _file("encode.onnx", _head)),
    Damage("reconstruct-empty", _file("reconstruct.onnx", lambda _: b"")),
    Damage("decode-is-the-encode-graph", _copy_graph("encode.onnx", "decode.onnx")),
    Damage("encode-and-reconstruct-swapped", _swap("encode.onnx", "reconstruct.onnx")),
    Damage("decode-input-renamed", _file("decode.onnx", _onnx(_rename_input))),
    Damage("decode-wrong-numbers", _file("decode.onnx", _onnx(_scale_first_weights))),
    Damage("decode-missing", _remove("decode.onnx")),
    Damage("decode-a-directory", _make_directory("decode.onnx")),
    # the prior's arrays
    Damage("prior-truncated", _file("prior.npz", _head)),
    Damage("prior-empty", _file("prior.npz", lambda _: b"")),
    Damage("prior-random-bytes", _file("prior.npz", _random_bytes(2048))),
    Damage("prior-missing-means", _file("prior.npz", _npz(_drop("mixture.means")))),
    Damage("prior-missing-rules", _file("prior.npz", _npz(_drop("rules")))),
    Damage("prior-rules-a-list", _file("prior.npz", _npz(_rules("[1, 2]")))),
    Damage("prior-rules-nested", _file("prior.npz", _npz(_rules("[" * 100_000 + "]" * 100_000)))),
    Damage(
        "prior-means-strings",
        _file(
            "prior.npz",
            _npz(_put("mixture.means", lambda a: np.full(a["mixture.means"].shape, "abc"))),
        ),
    ),
    Damage(
        "prior-labels-floats",
        _file("prior.npz", _npz(_put("classes.labels", lambda a: a["classes.labels"] + 0.5))),
    ),
    Damage(
        "prior-scale-tril-wrong-shape",
        _file(
            "prior.npz", _npz(_put("mixture.scale_tril", lambda a: a["mixture.scale_tril"][:, :3]))
        ),
    ),
    Damage("prior-of-latent-dim-16", _file("prior.npz", _npz(_other_latent_dim))),
    # the recorded check
    Damage("check-truncated", _file("check.npz", _tail_cut)),
    Damage("check-no-cases", _file("check.npz", _npz(lambda a: a.clear()))),
    Damage("check-missing-output", _file("check.npz", _npz(_drop("decode.01.output0")))),
    Damage(
        "check-bad-key",
        _file("check.npz", _npz(_put("decode.input", lambda a: a["decode.01.input"]))),
    ),
    Damage(
        "check-input-strings",
        _file(
            "check.npz",
            _npz(_put("decode.01.input", lambda a: np.full(a["decode.01.input"].shape, "x"))),
        ),
    ),
    Damage(
        "check-input-wrong-shape",
        _file("check.npz", _npz(_put("decode.01.input", lambda a: a["decode.01.input"][:, :16]))),
    ),
    Damage("check-without-encode-cases", _file("check.npz", _npz(_drop_op_cases("encode")))),
    Damage("check-wrong-numbers", _file("check.npz", _npz(_shift_outputs))),
    # the digit guide: read only where VAE_DIGIT_GUIDE names it
    Damage("guide-random-bytes", _file("digit-guide.onnx", _random_bytes(1000)), guide_only=True),
    Damage(
        "guide-metadata-not-json",
        _file("digit-guide.onnx", _onnx(_guide_metadata("{not json"))),
        guide_only=True,
    ),
]
