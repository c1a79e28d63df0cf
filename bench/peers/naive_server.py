"""The naive server: FastAPI, one forward pass per request in the threadpool, no batching.

CHECKPOINT=models/mnist-vae.pt uvicorn bench.peers.naive_server:app --no-access-log
"""

from __future__ import annotations

import torch
from fastapi import FastAPI, Response
from pydantic import BaseModel

from bench.peers.common import latent, load, png

model = load()
app = FastAPI()


class SampleRequest(BaseModel):
    n: int = 1
    seed: int | None = None


@app.post("/sample")
def sample(body: SampleRequest) -> Response:
    with torch.inference_mode():
        image = model.decode(latent(model, body.model_dump()))
    return Response(png(image[0]), media_type="image/png")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
