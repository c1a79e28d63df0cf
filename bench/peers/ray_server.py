"""Ray Serve: one replica, a FastAPI ingress, `@serve.batch` up to 64, the same model and PNG.

CHECKPOINT=models/mnist-vae.pt python -m bench.peers.ray_server PORT
"""

from __future__ import annotations

import sys
import time

import ray
import torch
from fastapi import Body, FastAPI, Response
from ray import serve

from bench.peers.common import DEVICE, latent, load, png

app = FastAPI()


GPUS = 1 if DEVICE.startswith("cuda") else 0  # without a GPU share Ray hides the GPU from it


@serve.deployment(
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 0, "num_gpus": GPUS},
)
@serve.ingress(app)
class Sampler:
    def __init__(self) -> None:
        self.model = load()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def decode(self, zs: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.inference_mode():
            return list(self.model.decode(torch.stack(zs)))

    @app.post("/sample")
    async def sample(self, body: dict = Body(...)) -> Response:  # noqa: B008
        image = await self.decode(latent(self.model, body)[0])
        return Response(png(image), media_type="image/png")

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}


if __name__ == "__main__":
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Sampler.bind(), route_prefix="/")
    while True:
        time.sleep(3600)
