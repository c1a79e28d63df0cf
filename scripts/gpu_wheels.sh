#!/usr/bin/env bash
# What the device machine needs carried (it has PyTorch but not the service's web stack, and no
# network), prepared here: the wheels named in scripts/gpu_wheels.txt, this venv's versions, for its
# Python 3.12 on x86-64, into .whl/; and MNIST gzipped into .gpu/mnist/ (both git-ignored). Then the
# commands of docs/gpu.md run there with carry [".whl", ".gpu"].
#
#   bash scripts/gpu_wheels.sh            # here, once
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
PY=${PYTHON:-.venv/bin/python}
names=$(grep -v '^#' scripts/gpu_wheels.txt | sed 's/-/[-_.]/g' | paste -sd'|')
packages=$($PY -m pip freeze | grep -iE "^($names)==" || true)
[ "$(echo "$packages" | grep -c .)" = "$(grep -vc '^#' scripts/gpu_wheels.txt)" ] \
  || { echo "gpu_wheels.sh: not all of scripts/gpu_wheels.txt is installed in $PY" >&2; exit 1; }
rm -rf .whl && mkdir -p .whl
# The device machine: Python 3.12 on x86-64 Linux (/work/.library/device/KINDS.md).
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl $packages
ls -la .whl
# MNIST as gzip (the device machine cannot download it): scripts/gpu_check.py unpacks it there.
$PY -c 'from training.data import provision; provision(__import__("pathlib").Path("data"), "mnist")'
mkdir -p .gpu/mnist
for f in data/MNIST/raw/*-ubyte; do gzip -c "$f" > ".gpu/mnist/$(basename "$f").gz"; done
ls -la .gpu/mnist
