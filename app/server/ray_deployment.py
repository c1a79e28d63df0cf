"""Ray Serve: the same FastAPI app as `vae-serve`, as replicas spread over a Ray cluster.

`serve run deploy/ray/serve.yaml` (or `serve deploy` to a running cluster) imports `app_builder`.
Each replica builds the app with `create_app()` on its own node, so it loads its own copy of the
model in the app's lifespan, reads its settings from the `VAE_*` variables of the Serve config's
`runtime_env`, and batches with the app's own `MicroBatcher`: Serve routes whole HTTP requests to
replicas and does no batching of its own (the README says why). Every response names the node and
the replica that answered it (`X-Ray-Node`, `X-Ray-Node-IP`, `X-Ray-Replica`), which is how the
two-node test tells the replicas apart. Needs the `[ray]` extra: `pip install -e '.[ray]'`.
"""

from __future__ import annotations

from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.main import create_app

# How many requests Serve lets into one replica at once. It must exceed the app's batch size,
# or Serve's own queue caps every batch (Serve's default, 5, would make batches of at most 5).
MAX_ONGOING_REQUESTS = 256
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 4,
    # Requests in flight per replica that the autoscaler aims for: enough to fill batches of 32.
    "target_ongoing_requests": 32,
    "upscale_delay_s": 10,
    "downscale_delay_s": 120,
}


class ReplicaHeaders:
    """Adds `X-Ray-Node` (id), `X-Ray-Node-IP` and `X-Ray-Replica` to every response, read once
    on the replica."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        node = ray.get_runtime_context().get_node_id()
        ip = ray.util.get_node_ip_address()
        replica = serve.get_replica_context().replica_id.unique_id
        self.headers = [
            (b"x-ray-node", node.encode()),
            (b"x-ray-node-ip", ip.encode()),
            (b"x-ray-replica", replica.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_fastapi_app() -> FastAPI:
    """Runs on each replica when it starts: the service's own app, configured from `VAE_*`."""
    app = create_app()
    app.add_middleware(ReplicaHeaders)
    return app


@serve.deployment(
    name="vae",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    autoscaling_config=AUTOSCALING,
    ray_actor_options={"num_cpus": 1},
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(build_fastapi_app)
class VAEService:
    """One replica: one process, one model copy, one micro-batcher per operation."""


def app_builder(args: dict[str, Any]) -> Application:
    """`import_path: app.server.ray_deployment:app_builder` in a Serve config, or `serve run`.

    `num_gpus` (default: 1 when the cluster has GPUs, else 0) goes into `ray_actor_options`, so
    on GPU nodes each replica gets a GPU of its own; the Serve config's `deployments:` entries
    override anything set here (replicas, autoscaling, resources).
    """
    num_gpus = args.get("num_gpus")
    if num_gpus is None:
        num_gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) else 0
    options = {"num_cpus": float(args.get("num_cpus", 1)), "num_gpus": float(num_gpus)}
    return VAEService.options(ray_actor_options=options).bind()
