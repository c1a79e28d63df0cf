#!/usr/bin/env bash
# Wheels of the service's web stack for the device machine, which has PyTorch but not these
# (and no network): downloaded here into .whl/ (git-ignored), carried with `run`, installed there.
# Then `make gpu-check` can run serve_bench too. Versions: those of this venv.
#
#   bash scripts/gpu_wheels.sh            # here, once
#   run(carry=[".whl", ".gpu"], command="python3 -m pip install -q --no-index --no-deps \
#       --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site make gpu-check GPU_CHECK_OUT=$OUT")
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
packages=$($PY -m pip freeze | grep -iE '^(fastapi|starlette|pydantic|pydantic[-_]core|pydantic[-_]settings|python-dotenv|uvicorn|httptools|annotated[-_]types|typing[-_]inspection|python-multipart)==')
# The device machine: Python 3.12 on x86-64 Linux (/work/.library/device/KINDS.md).
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl $packages
ls -la .whl
