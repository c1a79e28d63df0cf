"""The inference metrics (batches, queues, the model), on the default Prometheus registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

disable_created_metrics()  # the *_created series only add noise to every scrape

BATCH_SIZE = Histogram(
    "vae_batch_size",
    "Rows per forward pass, per batched operation",
    ["op"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
QUEUE_DEPTH = Gauge("vae_queue_depth", "Jobs waiting for a forward pass", ["op"])
QUEUE_CAPACITY = Gauge("vae_queue_capacity", "Jobs a queue holds before answering 503", ["op"])
MODEL_INFO = Info("vae_model", "The checkpoint being served")
MODEL_LOADS = Counter("vae_model_loads_total", "Checkpoints loaded (start-up and reloads)")
MODEL_LOAD_FAILURES = Counter(
    "vae_model_load_failures_total", "Reloads refused because the checkpoint could not be served"
)
