# The MNIST VAE service: torch + torchvision (CUDA wheels, which also run on the CPU), the app and
# the shipped checkpoint. No dataset, no compiler, no tests. See docs/deployment.md.
#
#   docker build -t mnist-vae .
#   docker build --build-arg BASE_IMAGE=mnist-vae-base:bookworm -t mnist-vae .   (stand-in base)
#
# Every dependency is a binary wheel, so one stage is enough: there is nothing to compile and no
# build tool to leave behind. The base may keep Python in /usr/local/bin (official images) or in
# /usr/bin (Debian), so everything runs from the virtualenv in /opt/venv.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    PORT=8000 \
    VAE_CHECKPOINT=/srv/checkpoints/mnist-vae.pt \
    VAE_DIGIT_GUIDE=/srv/guide/mnist-digit-guide.pt

RUN python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 vae \
 && useradd --system --uid 10001 --gid vae --home-dir /srv --no-create-home vae \
 && mkdir -p /srv/checkpoints /srv/data /srv/runs \
 && chown vae:vae /srv /srv/checkpoints /srv/data /srv/runs

# Dependencies first, with the `otel` extra (so OTEL_* turns traces on in the image): this layer
# (about 6 GB) is rebuilt only when pyproject.toml changes.
# uv installs them (parallel downloads and unpacking, bytecode compiled on every core): the build
# took 3 min here, against 6 min with pip. It runs from a throwaway venv, not kept in the image.
COPY pyproject.toml /src/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['otel']))" \
      >/tmp/requirements.txt \
 && python3 -m venv /tmp/uv \
 && /tmp/uv/bin/pip install --quiet "uv>=0.5" \
 && SSL_CERT_FILE=$PIP_CERT UV_NATIVE_TLS=1 UV_CACHE_DIR=/tmp/uv-cache \
      /tmp/uv/bin/uv pip install --python /opt/venv/bin/python --compile-bytecode \
      -r /tmp/requirements.txt \
 && rm -rf /tmp/uv /tmp/uv-cache /tmp/requirements.txt

# Then the code, installed as a regular package (no editable install, no sources at run time).
COPY README.md /src/README.md
COPY models/*.py /src/models/
COPY training /src/training
COPY app /src/app
RUN pip install --no-deps /src && rm -rf /src

# The shipped checkpoint. Compose mounts a named volume here; Docker seeds an empty volume from it.
COPY --chown=vae:vae models/mnist-vae.pt /srv/checkpoints/mnist-vae.pt
# The classifier that accepts chosen digits (POST /sample {"digit": d}); read-only, not a volume.
COPY models/mnist-digit-guide.pt /srv/guide/mnist-digit-guide.pt

USER vae
WORKDIR /srv
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=4)"
CMD exec vae-serve --host 0.0.0.0 --port "$PORT"
