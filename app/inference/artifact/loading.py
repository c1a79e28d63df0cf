"""Which reader serves a model file, and the digit guide beside it.

Two kinds of file serve. A torch checkpoint (`.pt`) is read with torch and its backend is
checked against eager PyTorch at load (`checkpoint_reader`). An export (`manifest.json` from
`vae-export`, `export_writer`: ONNX graphs, the prior as arrays, recorded checks) is read without
torch and serves through ONNX Runtime (`export_reader`); that is what the CPU image serves.
Either way the routes get the same `LoadedModel`, whose runner speaks NumPy.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from app.config import DEFAULT_DIGIT_GUIDE, Settings
from app.inference.artifact.export_format import EXPORT_SUFFIX
from app.inference.served import LoadedModel, torch_available
from models.checkpoint_errors import CheckpointError
from models.digit_guide import DigitGuide
from models.typicality import TypicalityError

log = logging.getLogger("app.engine")


def is_export(path: str | Path) -> bool:
    return Path(path).suffix == EXPORT_SUFFIX


def load_model(
    path: str | Path,
    device: str = "auto",
    fp16: bool = False,
    max_batch_size: int = 64,
    *,
    backend: str = "auto",
    threads: int = 1,
    cuda_graphs: bool = False,
) -> LoadedModel:
    """Loads and warms a torch checkpoint or an export; raises `CheckpointError` with a one-line
    reason (a torch checkpoint where torch is not installed says how to export it)."""
    if is_export(path):
        from app.inference.artifact.export_reader import load_export

        return load_export(Path(path), device, max_batch_size, backend=backend, threads=threads)
    if not torch_available():
        name = Path(path).name
        raise CheckpointError(
            f"{name} is a torch checkpoint, and this server runs without torch: export it with "
            f"`vae-export --checkpoint {name} --out DIR` and load DIR/manifest.json"
        )
    from app.inference.artifact.checkpoint_reader import load_checkpoint_model

    return load_checkpoint_model(
        Path(path),
        device,
        fp16,
        max_batch_size,
        backend=backend,
        threads=threads,
        cuda_graphs=cuda_graphs,
    )


def load_digit_guide(settings: Settings) -> DigitGuide | None:
    """The guide for chosen digits, or None: `VAE_DIGIT_GUIDE` empty, or the default file absent
    (logged once). A path that was set on purpose and cannot be loaded stops the start-up. An
    `.onnx` guide (what `vae-export` writes) runs on ONNX Runtime; so does a `.pt` one, exported
    to the same graph at start-up (a second or so), since it classifies every upload for the
    typicality score: eager torch takes 0.6 ms for one digit, ONNX Runtime under 0.1."""
    path = settings.digit_guide
    if not path:
        return None
    if path == DEFAULT_DIGIT_GUIDE and not Path(path).is_file():
        log.warning("digit guide %s not found: chosen digits are drawn unguided", path)
        return None
    if Path(path).suffix == ".onnx":
        from app.inference.artifact.export_guide import load_onnx_guide

        guide = load_onnx_guide(Path(path), settings.digit_candidates)
    elif not torch_available():
        raise CheckpointError(
            f"VAE_DIGIT_GUIDE: {path} is a torch file, and this server runs without torch: "
            "point it at the digit-guide.onnx that vae-export writes"
        )
    else:
        import torch

        from app.inference.threads import inference_threads
        from models.classifier import ClassifierError
        from models.digit_guide import load_guide

        # the guide classifies on the inference thread: as few torch threads as the model gets
        torch.set_num_threads(inference_threads(settings.torch_threads))

        from app.inference.artifact.export_guide import onnx_guide_from_torch

        try:
            guide = load_guide(path, settings.digit_candidates)
            guide = onnx_guide_from_torch(guide)
        except ClassifierError as exc:
            raise CheckpointError(f"VAE_DIGIT_GUIDE: {exc}") from exc
    log.info("chosen digits: up to %d candidates each, accepted by %s", guide.candidates, path)
    return guide


def with_digit_guide(m: LoadedModel, guide: DigitGuide | None) -> LoadedModel:
    """`m` whose typicality score takes the guide's confidence too, where its calibration was made
    with this guide (`Typicality.with_guide`); else `m` as it is, scoring on the latent terms
    alone (logged, with the reason)."""
    if m.typicality is None or guide is None:
        return m
    try:
        bound = m.typicality.with_guide(guide.probabilities)
    except TypicalityError as exc:
        log.warning("the typicality score runs without the digit guide: %s", exc)
        return m
    return dataclasses.replace(m, typicality=bound)


def check_servable(path: Path, device: str, backend: str = "auto") -> None:
    """What `vae-serve` checks before it starts uvicorn: the file can be read and the device
    exists, so a bad `VAE_CHECKPOINT` fails with one line instead of a traceback per worker.
    An export is verified whole, its graphs run on its recorded check (half a second), since
    torch does not vouch for it."""
    if is_export(path):
        from app.inference.artifact.export_reader import verify_export

        verify_export(path, device, backend=backend, threads=1)
        return
    if not torch_available():
        load_model(path, device)  # raises the message that says how to export it
    from models.checkpoint import load_checkpoint
    from models.runtime import resolve_device

    resolve_device(device)
    load_checkpoint(path)


def check_digit_guide(settings: Settings) -> None:
    """What `vae-serve` checks of an `.onnx` guide (the torch-free image's, from the export)
    before it starts uvicorn: it loads (tens of milliseconds), or it fails with one line."""
    if settings.digit_guide and Path(settings.digit_guide).suffix == ".onnx":
        from app.inference.artifact.export_guide import load_onnx_guide

        load_onnx_guide(Path(settings.digit_guide), settings.digit_candidates)
