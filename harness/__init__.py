"""The development harness: what the tests, benchmarks and scripts share, and the service never
imports (a contract in pyproject.toml; the Docker images do not hold it).

- `processes`: a free loopback port, a process's memory and CPU time from /proc, stopping it;
- `server`: a server in a subprocess, started when it serves and stopped on the way out;
- `live_server`: our service that way (`vae-serve`, plain uvicorn or the entry point);
- `ray_cluster`: Ray nodes on this machine serving `deploy/ray/serve.yaml`;
- `browser`: Debian's headless Chromium, as Playwright launches it;
- `photo_scenes`, `not_digits`: seeded uploads (phone photos of digits, things that are not one);
- `heavy_png`: the upload that is tiny on the wire and large once decoded.
"""
