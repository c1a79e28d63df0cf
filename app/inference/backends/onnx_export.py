"""The three operations of a torch checkpoint as ONNX graphs (the exporter needs torch)."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from app.inference.backends.eager import reconstruct_graph
from models.vae import ConvVAE

OPSET = 17


class _Encode(nn.Module):
    def __init__(self, model: ConvVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)


class _Decode(_Encode):
    def forward(self, z: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model.decode(z)


class _Reconstruct(_Encode):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return reconstruct_graph(self.model, x, for_export=True)


GRAPHS = {
    "encode": (_Encode, ("mu", "logvar")),
    "decode": (_Decode, ("image",)),
    "reconstruct": (_Reconstruct, ("mu", "logvar", "reconstruction", "neg_elbo")),
}


def export_onnx(model: ConvVAE, cache_key: str | None = None) -> dict[str, bytes]:
    """The three operations as ONNX graphs with a dynamic batch axis, from a float32 CPU copy.

    TorchScript-based export takes about 1 s for all three on this machine (the dynamo exporter
    about 10 s per graph). `cache_key` (the checkpoint's sha256) keeps the graphs for the process,
    so reloading the same checkpoint, or a test suite starting many apps, exports once.
    """
    if cache_key is not None and cache_key in _EXPORTED:
        return _EXPORTED[cache_key]
    cpu = _float_cpu_copy(model)
    side = cpu.config.image_size
    image = torch.zeros(2, cpu.config.in_channels, side, side)
    examples = {"encode": image, "decode": torch.zeros(2, cpu.latent_dim), "reconstruct": image}
    graphs: dict[str, bytes] = {}
    for op, (wrapper, outputs) in GRAPHS.items():
        # A fresh wrapper is in training mode, and export restores it (and the model inside it)
        # to that mode afterwards: set eval on the wrapper, not only on the model.
        module = wrapper(cpu).eval()
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (examples[op],),
                buffer,
                input_names=["input"],
                output_names=list(outputs),
                dynamic_axes={name: {0: "batch"} for name in ("input", *outputs)},
                opset_version=OPSET,
                dynamo=False,
            )
        graphs[op] = buffer.getvalue()
    if cache_key is not None:
        while len(_EXPORTED) >= 4:
            _EXPORTED.pop(next(iter(_EXPORTED)))
        _EXPORTED[cache_key] = graphs
    return graphs


_EXPORTED: dict[str, dict[str, bytes]] = {}


def _float_cpu_copy(model: ConvVAE) -> ConvVAE:
    copy = ConvVAE(model.config)
    copy.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    return copy.eval()
