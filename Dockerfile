# The MNIST VAE service, two images from one file. See docs/deployment.md.
#
#   docker build -t mnist-vae .                          the GPU image (default): torch + CUDA wheels
#   docker build --target cpu -t mnist-vae-cpu .         the CPU image: ONNX Runtime, no torch, < 1 GB
#   ... --build-arg BASE_IMAGE=mnist-vae-base:bookworm   on the stand-in base (scripts/docker/)
#
# Stages: `runtime` (venv, user, health check) -> `gpu` (torch, the app, the checkpoint) ->
# `export` (runs `vae-export` in the GPU stage) ; `runtime` -> `cpu` (the serving dependencies
# without torch, the app, the export). The CPU image's torch work is the GPU image's own layers,
# so a daemon that builds both installs torch once. Every dependency is a binary wheel: nothing is
# compiled and no build tool is left behind. The base may keep Python in /usr/local/bin (official
# images) or in /usr/bin (Debian), so everything runs from the virtualenv in /opt/venv.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    PORT=8000

RUN python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 vae \
 && useradd --system --uid 10001 --gid vae --home-dir /srv --no-create-home vae \
 && mkdir -p /srv/checkpoints /srv/data /srv/runs \
 && chown vae:vae /srv /srv/checkpoints /srv/data /srv/runs

# The dependency list is read from pyproject.toml by one script, so it cannot drift; torch is pinned
# by constraints.txt (torch 2.14.1, its CUDA 13.0 build: the GPU image needs NVIDIA driver >= 580).
COPY scripts/docker/requirements.py scripts/docker/constraints.txt pyproject.toml /opt/build/

WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4)"
CMD exec vae-serve --host 0.0.0.0 --port "$PORT"


# The GPU image: every dependency with the `otel` extra (so OTEL_* turns traces on). This layer
# (about 6 GB) is rebuilt only when pyproject.toml changes.
FROM runtime AS gpu
ENV VAE_CHECKPOINT=/srv/checkpoints/mnist-vae.pt \
    VAE_DIGIT_GUIDE=/srv/guide/mnist-digit-guide.pt
RUN python /opt/build/requirements.py /opt/build/pyproject.toml --extra otel \
      --constraint /opt/build/constraints.txt
# Then the code, installed as a regular package (no editable install, no sources at run time).
COPY pyproject.toml README.md /src/
COPY models/*.py /src/models/
COPY training /src/training
COPY app /src/app
RUN pip install --no-deps /src && rm -rf /src
# The shipped checkpoint. Compose mounts a named volume here; Docker seeds an empty volume from it.
COPY --chown=vae:vae models/mnist-vae.pt /srv/checkpoints/mnist-vae.pt
# The classifier that accepts chosen digits (POST /sample {"digit": d}); read-only, not a volume.
COPY models/mnist-digit-guide.pt /srv/guide/mnist-digit-guide.pt
USER vae


# The checkpoint as the CPU image serves it, exported in the GPU image (cached when that was built):
# ONNX graphs, the prior's arrays, the recorded check and the digit guide's graph, each with its
# sha256 in manifest.json.
FROM gpu AS export
RUN vae-export --checkpoint "$VAE_CHECKPOINT" --digit-guide "$VAE_DIGIT_GUIDE" --out /tmp/export


# The CPU image: the serving dependencies without torch, torchvision and onnx (the exporter's), the
# app and the export, served through ONNX Runtime by the same code as the GPU image.
FROM runtime AS cpu
ENV VAE_CHECKPOINT=/srv/checkpoints/mnist-vae/manifest.json \
    VAE_DIGIT_GUIDE=/srv/checkpoints/mnist-vae/digit-guide.onnx
RUN python /opt/build/requirements.py /opt/build/pyproject.toml \
      --extra otel --without torch torchvision onnx --constraint /opt/build/constraints.txt
COPY pyproject.toml README.md /src/
COPY models/*.py /src/models/
COPY app /src/app
RUN pip install --no-deps /src && rm -rf /src
# Compose mounts a named volume on /srv/checkpoints, which Docker seeds from here;
# `POST /admin/reload` loads other exports from that folder.
COPY --from=export --chown=vae:vae /tmp/export /srv/checkpoints/mnist-vae
USER vae


# `docker build .` without --target builds the GPU image, as before.
FROM gpu
