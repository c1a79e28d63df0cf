"""LitServe with dynamic batching up to 64, the same model and PNG contract.

CHECKPOINT=models/mnist-vae.pt python -m bench.peers.litserve_server PORT
"""

from __future__ import annotations

import sys

import litserve as ls
import torch
from fastapi import Response

from bench.peers.common import DEVICE, latent, load, png


class SampleAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load()

    def decode_request(self, request: dict) -> torch.Tensor:
        return latent(self.model, request)[0]

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.decode(z if z.dim() == 2 else z.unsqueeze(0))

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, image: torch.Tensor) -> Response:
        return Response(png(image if image.dim() == 3 else image[0]), media_type="image/png")


if __name__ == "__main__":
    api = SampleAPI(max_batch_size=64, batch_timeout=0.002, api_path="/sample")
    accelerator = "cuda" if DEVICE.startswith("cuda") else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, workers_per_device=1, track_requests=False)
    server.run(
        port=int(sys.argv[1]), host="127.0.0.1", log_level="warning", generate_client_file=False
    )
