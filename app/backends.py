"""Where forward passes run: eager PyTorch, ONNX Runtime or OpenVINO, each checked against eager.

On the CPU the framework's own overhead is most of a forward pass of this small network: on the
2-core machine, one thread, the shipped model decodes one digit in 1.9 ms with eager PyTorch,
0.68 ms with ONNX Runtime and 0.86 ms with OpenVINO (batch 64: 0.73, 0.62, 0.67 ms per digit). So
`VAE_BACKEND=auto` serves the CPU with ONNX Runtime and CUDA with PyTorch (CUDA graphs per batch
size bucket, see `app/cuda_graphs.py`).

Every runner is checked at load against eager PyTorch on fixed inputs (`check`); one that cannot be
built or misses its bound is replaced by eager PyTorch, with one log line that says why. A runner
takes and returns float32 CPU tensors, so the batcher and the routes never know which one serves.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from models.likelihood import bernoulli_nll, crop_padding, gaussian_kl
from models.runtime import float32_numpy
from models.vae import ConvVAE

log = logging.getLogger("app.backends")

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "openvino-bf16")
# fp32 runners must match eager within 1e-4, relative above 1 (neg_elbo is ~100 nats, and a sum
# over 784 pixels in another order differs by more than 1e-4 absolute, while pixels and latents are
# held to 1e-4 absolute). Reduced precision gets its own documented bound.
FP32_BOUND = 1e-4
REDUCED_BOUND = 0.05
CHECK_SEED = 20260101
OPSET = 17


class Runner(Protocol):
    """The three batched operations on float32 CPU tensors, [N, ...] in and out."""

    name: str
    precision: str
    bound: float

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]: ...


@dataclass(frozen=True)
class BackendInfo:
    """What `/model` reports: what was asked for, what serves, and how close it is to eager."""

    requested: str
    name: str
    precision: str
    max_error: float | None = None  # against eager, in the units of `bound`; None: eager itself
    bound: float | None = None
    fallback_reason: str | None = None


def reconstruct_graph(
    model: ConvVAE, x: torch.Tensor, for_export: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x -> (mu, logvar, reconstruction at the posterior mean, -ELBO at z=mu in nats).

    Exported graphs spell the Bernoulli NLL out in its stable form: the exporter turns
    `binary_cross_entropy_with_logits` into log(sigmoid), which is -inf for a saturated pixel.
    """
    mu, logvar = model.encode(x)
    logits = model.decode_logits(mu)
    nll = _stable_bernoulli_nll(logits, x) if for_export else bernoulli_nll(logits, x)
    neg_elbo = nll + gaussian_kl(mu, logvar)
    return mu, logvar, model.logits_to_means(logits), neg_elbo


def _stable_bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`training.objective.bernoulli_nll` as max(a, 0) - a*t + log1p(exp(-|a|)), per image."""
    a, t = crop_padding(logits), crop_padding(target)
    bce = a.clamp(min=0) - a * t + torch.log1p(torch.exp(-a.abs()))
    return bce.flatten(1).sum(1)


class TorchRunner:
    """Eager PyTorch under `inference_mode`: the reference every other runner is checked against."""

    name = "torch"
    bound = 0.0

    def __init__(self, model: ConvVAE, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.precision = {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            mu, logvar = self.model.encode(x.to(self.device, self.dtype))
            return mu.float().cpu(), logvar.float().cpu()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.decode(z.to(self.device, self.dtype)).float().cpu()

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            outputs = reconstruct_graph(self.model, x.to(self.device, self.dtype))
            return tuple(t.float().cpu() for t in outputs)


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


class GraphRunner:
    """The three operations of a runner that runs one graph per operation by name (`_run`)."""

    def _run(self, op: str, x: torch.Tensor) -> Sequence[torch.Tensor]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._run("encode", x)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._run("decode", z)[0]

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._run("reconstruct", x))


class OnnxRuntimeRunner(GraphRunner):
    """ONNX Runtime's CPU provider, `threads` intra-op threads that sleep rather than spin.

    Spinning workers would compete with the event loop for the cores it was promised (the same
    reason `inference_threads` keeps one core free); with one thread there is no pool at all.
    """

    name = "onnxruntime"
    precision = "f32"
    bound = FP32_BOUND

    def __init__(self, graphs: dict[str, bytes], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._sessions = {
            op: ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            for op, graph in graphs.items()
        }

    def _run(self, op: str, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._sessions[op].run(None, {"input": float32_numpy(x)})
        return [torch.from_numpy(o) for o in outputs]


class OpenVinoRunner(GraphRunner):
    """OpenVINO on the CPU: float32, or its own default precision (bf16 where the CPU has it).

    The default precision is 1.6x faster per digit at batch 64 on this machine, with pixel errors
    up to about 0.02: it is only served under its own name, `openvino-bf16`, and its own bound.
    Infer requests are not thread-safe; each operation has one, and only the inference thread (or
    the loading thread, before the model is installed) uses it.
    """

    name = "openvino"
    bound = FP32_BOUND

    def __init__(self, graphs: dict[str, bytes], threads: int, reduced: bool = False) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, object] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,  # taskset and containers decide the cores, not OpenVINO
        }
        if reduced:
            self.name, self.bound = "openvino-bf16", REDUCED_BOUND
        else:
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self._requests = {}
        for op, graph in graphs.items():
            compiled = core.compile_model(core.read_model(graph, b""), "CPU", config)
            self._requests[op] = compiled.create_infer_request()
            self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _run(self, op: str, x: torch.Tensor) -> list[torch.Tensor]:
        request = self._requests[op]
        result = request.infer({0: float32_numpy(x)})  # copies the outputs (share_outputs=False)
        return [torch.from_numpy(result[o]) for o in request.model_outputs]


def check(runner: Runner, reference: TorchRunner, batch_sizes: tuple[int, ...] = (1, 16)) -> float:
    """Largest error of `runner` against eager over fixed inputs, in units where 1e-4 means 1e-4.

    The inputs are fixed: latents from a seeded generator, and the images eager decodes from them
    (digit-like, zero border), so the check sees what the service sees. The error of a value is
    |runner - eager| / max(1, |eager|): absolute for pixels and latents, relative for neg_elbo.
    """
    generator = torch.Generator().manual_seed(CHECK_SEED)
    worst = 0.0
    for n in batch_sizes:
        z = torch.randn(n, reference.model.latent_dim, generator=generator)
        x = reference.decode(z)
        pairs = [
            *zip(runner.encode(x), reference.encode(x), strict=True),
            (runner.decode(z), reference.decode(z)),
            *zip(runner.reconstruct(x), reference.reconstruct(x), strict=True),
        ]
        for got, want in pairs:
            if got.shape != want.shape:
                return float("inf")
            error = ((got.float() - want) / want.abs().clamp(min=1.0)).abs().max().item()
            if error != error:  # NaN
                return float("inf")
            worst = max(worst, error)
    return worst


def resolve_backend(requested: str, device: torch.device) -> str:
    """`auto`: ONNX Runtime on the CPU when it is installed, PyTorch (CUDA graphs) on CUDA."""
    if requested != "auto":
        return requested
    if device.type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnxruntime"


def build_runner(name: str, model: ConvVAE, threads: int, cache_key: str | None = None) -> Runner:
    """A non-torch runner for `model` (float32, CPU); raises if it cannot be built here."""
    graphs = export_onnx(model, cache_key)
    if name == "onnxruntime":
        return OnnxRuntimeRunner(graphs, threads)
    if name in ("openvino", "openvino-bf16"):
        return OpenVinoRunner(graphs, threads, reduced=name == "openvino-bf16")
    raise ValueError(f"unknown backend {name!r}; pick from {', '.join(BACKENDS)}")


def select_runner(
    requested: str,
    reference: TorchRunner,
    threads: int,
    *,
    cache_key: str | None = None,
    cuda_graphs: bool = True,
    max_batch_size: int = 64,
) -> tuple[Runner, BackendInfo]:
    """The runner to serve with: the requested backend if it builds and passes `check`, else
    eager PyTorch, with one warning that says why."""
    name = resolve_backend(requested, reference.device)
    if name == "torch" and not (cuda_graphs and reference.device.type == "cuda"):
        return reference, BackendInfo(requested, "torch", reference.precision)
    if name == "torch":

        def build() -> Runner:
            from app.cuda_graphs import CudaGraphRunner, buckets_up_to

            return CudaGraphRunner(reference, buckets_up_to(max_batch_size))
    elif reference.device.type != "cpu":
        reason = f"{name} serves the CPU only, and the model is on {reference.device}"
        return _fall_back(requested, reference, reason)
    else:

        def build() -> Runner:
            return build_runner(name, reference.model, threads, cache_key)

    try:
        runner = build()
        error = check(runner, reference)
    except Exception as exc:  # a missing package, an export or compile failure: serve with torch
        return _fall_back(requested, reference, f"{name} could not be built: {exc}")
    if not error <= runner.bound:
        reason = f"{runner.name} differs from eager by {error:.3g}, over its bound {runner.bound:g}"
        return _fall_back(requested, reference, reason)
    info = BackendInfo(requested, runner.name, runner.precision, error, runner.bound)
    return runner, info


def _fall_back(requested: str, reference: TorchRunner, reason: str) -> tuple[Runner, BackendInfo]:
    log.warning("backend %s not used, serving with torch: %s", requested, reason)
    return reference, BackendInfo(requested, "torch", reference.precision, fallback_reason=reason)
