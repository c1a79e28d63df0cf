"""Prometheus metrics, defined once per process on the default registry."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

import torch
from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

if TYPE_CHECKING:
    from app.engine import LoadedModel

disable_created_metrics()  # the *_created series only add noise to every scrape

REQUESTS = Counter(
    "vae_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "vae_http_request_duration_seconds",
    "Time from request start to the last response byte",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "vae_batch_size",
    "Rows per forward pass, per batched operation",
    ["op"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_DEPTH = Gauge("vae_queue_depth", "Jobs waiting for a forward pass", ["op"])
MODEL_INFO = Info("vae_model", "The checkpoint being served")
MODEL_LOADS = Counter("vae_model_loads_total", "Checkpoints loaded (start-up and reloads)")


def set_model_info(m: LoadedModel) -> None:
    MODEL_INFO.info(
        {
            "checkpoint": m.checkpoint.name,  # the file name only: /metrics is open to all
            "sha256": m.sha256,
            "preset": str(m.metadata.get("preset", "unknown")),
            "latent_dim": str(m.latent_dim),
            "device": str(m.device),
            "dtype": str(m.dtype).removeprefix("torch."),
            "backend": m.backend.name,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        }
    )
    MODEL_LOADS.inc()
