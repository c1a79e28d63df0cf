"""Hostile Open Inference Protocol requests on a real `vae-serve` over loopback (issue 22, 1-4).

Each body here once gave a 500, a `NaN` token in a 200, a 290 MB response or a blocked event loop.
Now each is a 400 (or a 405, 413) in the protocol's `{"error": ...}` shape, no 200 holds a value
JSON cannot carry, and big bodies are parsed and answered off the event loop.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.routes.oip import MAX_BODY_BYTES
from harness.live_server import LiveServer, read_all, status_and_body
from models.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[LiveServer]:
    live = LiveServer(tiny_checkpoint)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def names(tiny_checkpoint: Path) -> dict:
    model, metadata = load_checkpoint(tiny_checkpoint)
    dataset = metadata["dataset"]["name"]
    return {
        "latent": model.latent_dim,
        "decoder": f"{dataset}-vae-decoder",
        "encoder": f"{dataset}-vae-encoder",
    }


def z_request(latent: int, data: object, shape: list[int] | None = None, **extra) -> bytes:
    tensor = {"name": "z", "datatype": "FP32", "shape": shape or [1, latent], "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def protocol_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text[:300]
    assert set(response.json()) <= {"error", "request_id"}, response.text[:300]
    assert isinstance(response.json()["error"], str)
    return response.json()["error"]


def hostile_bodies(latent: int) -> dict[str, bytes]:
    row = [0.5] * latent
    return {
        "nested-5000-deep": b'{"inputs": [{"name": "z", "data": ' + b"[" * 5000 + b"]" * 5000,
        "integer-of-5000-digits": z_request(latent, [0] * (latent - 1) + [0]).replace(
            b"[0, ", b"[" + b"7" * 5000 + b", ", 1
        ),
        "boolean-among-numbers": z_request(latent, [1.0] * (latent - 1) + [True]),
        "nested-too-deep": z_request(latent, [[[v] for v in row]]),
        "nested-too-shallow-for-two-rows": z_request(latent, [row + row], [2, latent]),
        "3e38-finite-in-fp32": z_request(latent, [3e38] + row[1:]),
        "1e39-infinite-in-fp32": z_request(latent, [1e39] + row[1:]),
        "beyond-1000": z_request(latent, [1000.5] + row[1:]),
        "nan-token": z_request(latent, [0.5] * latent).replace(b"0.5", b"NaN", 1),
        "infinity-token": z_request(latent, [0.5] * latent).replace(b"0.5", b"-Infinity", 1),
        "image-asked-twice": z_request(latent, row, outputs=[{"name": "image"}] * 2),
        "batch-of-257": z_request(latent, [0.0] * latent * 257, [257, latent]),
        "batch-of-0": z_request(latent, [], [0, latent]),
    }


def test_hostile_bodies_get_400_in_the_protocol_shape(server, names):
    url = f"{server.url}/v2/models/{names['decoder']}/infer"
    for case, body in hostile_bodies(names["latent"]).items():
        response = httpx.post(url, content=body, timeout=30)
        detail = protocol_error(response, 400)
        assert detail, case
    assert not any("Traceback" in line for line in server.log)


def test_every_200_is_strict_json_within_bounds(server, names):
    """Values at the bound come back as finite numbers: the response parses with NaN refused."""
    latent = names["latent"]
    url = f"{server.url}/v2/models/{names['decoder']}/infer"
    for value in (1000.0, -1000.0, 1e-30, 0):
        response = httpx.post(url, content=z_request(latent, [value] * latent), timeout=30)
        assert response.status_code == 200, response.text[:300]
        parsed = json.loads(response.text, parse_constant=pytest.fail)
        data = np.array(parsed["outputs"][0]["data"], dtype=np.float32)
        assert np.isfinite(data).all() and data.size == 32 * 32


def test_wrong_methods_unknown_routes_and_oversized_bodies_answer_in_the_protocol_shape(
    server, names
):
    decoder = f"{server.url}/v2/models/{names['decoder']}/infer"
    assert "use POST" in protocol_error(httpx.get(decoder, timeout=30), 405)
    assert "use POST" in protocol_error(httpx.put(decoder, timeout=30), 405)
    protocol_error(httpx.delete(f"{server.url}/v2", timeout=30), 405)
    protocol_error(httpx.post(f"{server.url}/v2/nothing", timeout=30), 404)

    # Content-Length says more than any request can need: 413 before a byte of body is sent.
    for path, length in ((f"/v2/models/{names['decoder']}/infer", 2_000_000), ("/v2", 10**7)):
        sock = server.connect()
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path.encode(), length)
        )
        code, body = status_and_body(read_all(sock))
        sock.close()
        assert code == 413 and "too large" in json.loads(body)["error"]

    # The edge's own refusals, before the app, speak the protocol's shape on /v2 too.
    sock = server.connect()
    fields = b"".join(b"X-F%d: 1\r\n" % i for i in range(150))
    sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    code, body = status_and_body(read_all(sock))
    sock.close()
    assert code == 431 and "header fields" in json.loads(body)["error"]


def test_an_unexpected_exception_under_v2_is_a_protocol_500(make_settings):
    """The last resort answers a bug with the request id, in the shape of the path's clients."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    app = create_app(make_settings())

    @app.get("/v2/raises")
    async def raises() -> None:
        raise RuntimeError("a bug")

    @app.get("/raises")
    async def raises_outside() -> None:
        raise RuntimeError("a bug")

    routes = app.router.routes  # ahead of the web page, which is mounted at "/"
    routes[:] = routes[-2:] + routes[:-2]

    with TestClient(app, raise_server_exceptions=False) as client:
        protocol = client.get("/v2/raises")
        assert protocol.status_code == 500
        assert protocol.json()["error"] == "internal error" and protocol.json()["request_id"]
        plain = client.get("/raises")
        assert plain.status_code == 500 and plain.json()["detail"] == "internal error"


def test_repeated_outputs_and_big_json_bodies_leave_the_event_loop_free(server, names):
    """Six clients send full batches of 256 images as JSON (about 5 MB each) to the encoder and
    full decoder batches as JSON back, while /healthz is timed: parsing and writing run on
    worker threads, so it keeps answering; no response is larger than its outputs."""
    rng = np.random.default_rng(0)
    images = rng.random((256, 1, 32, 32), dtype=np.float32)
    encoder_body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [256, 1, 32, 32],
                    "data": images.ravel().tolist(),
                }
            ],
            "outputs": [{"name": "mu"}, {"name": "logvar"}],
        }
    ).encode()
    assert len(encoder_body) < MAX_BODY_BYTES
    latent = names["latent"]
    decoder_body = z_request(latent, [0.1] * latent * 256, [256, latent])
    urls = {
        "encoder": f"{server.url}/v2/models/{names['encoder']}/infer",
        "decoder": f"{server.url}/v2/models/{names['decoder']}/infer",
    }
    sizes: list[int] = []
    statuses: list[int] = []
    stop = threading.Event()

    def client(kind: str, body: bytes) -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                response = http.post(urls[kind], content=body)
                statuses.append(response.status_code)
                sizes.append(len(response.content))

    threads = [
        threading.Thread(target=client, args=("encoder" if i % 2 else "decoder", body))
        for i, body in enumerate([decoder_body, encoder_body] * 3)
    ]
    for thread in threads:
        thread.start()
    latencies = []
    deadline = time.monotonic() + 12
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            assert http.get(f"{server.url}/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses and set(statuses) <= {200, 503}, set(statuses)
    assert max(sizes) < 20 * 2**20
    p99 = float(np.percentile(latencies, 99))
    print(
        f"/healthz under 6 JSON clients: p50 {np.median(latencies) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms, {len(statuses)} infers"
    )
    assert p99 < 1.0  # the bound for repeated outputs; measured far lower (operations.md)
