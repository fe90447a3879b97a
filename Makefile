# One virtualenv (.venv, git-ignored) for everything; torch comes from this machine's local wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PACKAGES := learner adapters_store service

.PHONY: setup data run demo test test-unit check format bench bench-quick bench-step clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(STAMP) data

# Fashion-MNIST as IDX files, from Debian (MIT licence); the learner's default real data.
data:
	@test -f $(FMNIST) || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }

run: setup  ## the main job: Redis, a Celery worker and the BentoML service; Ctrl-C stops all
	$(VENV)/bin/janus up

demo: setup  ## a short class-incremental Janus-LoRA run that prints the accuracy matrix
	$(VENV)/bin/janus demo

test: setup  ## every test tier: unit, integration (real S3 server), slow
	$(VENV)/bin/pytest

test-unit: setup
	$(VENV)/bin/pytest -m "not integration and not slow"

check: setup
	$(VENV)/bin/ruff check $(PACKAGES) tests
	$(VENV)/bin/ruff format --check $(PACKAGES) tests
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix $(PACKAGES) tests
	$(VENV)/bin/ruff format $(PACKAGES) tests

bench: setup  ## the full class-incremental benchmark (CPU: about an hour)
	$(VENV)/bin/janus bench cl --ablation --out runs/bench-cl

bench-quick: setup
	$(VENV)/bin/janus bench cl --quick --out runs/bench-cl-quick

bench-step: setup  ## step time of janus, its ablations and baselines over seq-lora, interleaved
	$(VENV)/bin/janus bench step --methods janus,janus-no-oe,janus-no-gr,janus-no-dml,inflora,lora-gpm --out runs/bench-step

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
