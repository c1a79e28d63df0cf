# Two commands do the whole set-up on a fresh clone: `make serve` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test lint format system-deps bench gpu-check gpu-train gpu-evaluate clean

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

# The GPU work as three commands of <= 8 minutes each, in this order (scripts/gpu_check.py,
# docs/gpu.md): everything GPU-only, then the retrain, then the full evaluation. Without a GPU each
# says so and exits 0. `make gpu-check REHEARSE=1` runs all three on the CPU at tiny sizes, the way
# the device machine runs them (scripts/gpu_rehearsal.py); `make test` runs it too.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_OUT ?= runs/gpu-$(if $(filter 1,$(REHEARSE)),rehearsal,check)
gpu-check:
ifeq ($(REHEARSE),1)
	$(GPU_PYTHON) scripts/gpu_rehearsal.py --out $(GPU_CHECK_OUT)
else
	$(GPU_PYTHON) scripts/gpu_check.py check --out $(GPU_CHECK_OUT)
endif

gpu-train gpu-evaluate:
	$(GPU_PYTHON) scripts/gpu_check.py $(@:gpu-%=%) --out runs/$@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
