# Two commands do the whole set-up on a fresh clone: `make serve` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint format system-deps bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev,train,openvino,ray,otel]'
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/vae-serve --host $(HOST) --port $(PORT)

system-deps:
	bash scripts/system-deps.sh

test: install system-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/train_bench.py
	$(PY) bench/serve_bench.py

# Everything GPU-only in <= 8 minutes, one JSON + one markdown table (scripts/gpu_check.py); on a
# machine without a GPU it says so and exits 0. The device machine has no venv: python3 there.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
