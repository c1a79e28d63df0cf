"""KServe 0.21.0's Python model server with the decoder as a `kserve.Model`, one worker.

    <kserve venv>/bin/python -m bench.peers.kserve_decoder --onnx EXPORT/decode.onnx \
        --http_port PORT --enable_grpc false --model_name mnist-vae-decoder

Run from `bench/oip_bench.py` with PYTHONPATH at the repository. `kserve.model_server` parses
`sys.argv` when it is imported, so the server's own flags go on this command line and this module
reads only `--onnx` beside them. One worker and no batcher (KServe's Python server has none); the
REST server binds 0.0.0.0 whatever it is told, and answers 500 to a request without an "id".
"""

from __future__ import annotations

import argparse

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from bench.peers.onnx_decoder import INPUT, OUTPUT, decode, decoder_session


class Decoder(Model):
    """`z` [N, latent] FP32 -> `image` [N, 1, 32, 32] FP32 through the export's decoder graph."""

    def __init__(self, name: str, onnx: str) -> None:
        super().__init__(name)
        self.onnx = onnx
        self.load()

    def load(self) -> bool:
        self.session = decoder_session(self.onnx)
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None):
        """Synchronous, as KServe's custom-model examples are: it runs on the event loop."""
        tensor = payload.get_input_by_name(INPUT) or payload.inputs[0]
        image = decode(self.session, tensor.as_numpy())
        output = InferOutput(OUTPUT, list(image.shape), "FP32", data=image)
        return InferResponse(payload.id, self.name, [output])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--model_name", default="mnist-vae-decoder")
    args, _ = parser.parse_known_args()  # the rest is kserve.model_server's, read at its import
    ModelServer(workers=1).start([Decoder(args.model_name, args.onnx)])


if __name__ == "__main__":
    main()
