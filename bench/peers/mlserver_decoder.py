"""Seldon MLServer 1.7.1 with the decoder as an `mlserver.MLModel`, adaptive batching up to 64.

    <mlserver venv>/bin/mlserver start FOLDER

FOLDER holds `settings.json` and `model-settings.json` (written by `bench/oip_bench.py`, which
points `parameters.uri` at the export's `decode.onnx` and `implementation` at `Decoder` here);
those files win over `MLSERVER_*` environment variables. `parallel_workers` must be 0: with the
default 1, MLServer 1.7.1 does not start under uvloop >= 0.22.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from bench.peers.onnx_decoder import INPUT, OUTPUT, decode, decoder_session


class Decoder(MLModel):
    """`z` [N, latent] FP32 -> `image` [N, 1, 32, 32] FP32; MLServer's batcher merges requests."""

    async def load(self) -> bool:
        self.session = decoder_session(self.settings.parameters.uri)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Runs on the event loop, as MLServer's own runtimes do with `parallel_workers` 0."""
        tensor = next((t for t in payload.inputs if t.name == INPUT), payload.inputs[0])
        image = decode(self.session, self.decode(tensor, default_codec=NumpyCodec))
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(OUTPUT, image)],
        )
