# One virtualenv (.venv, git-ignored) for everything; torch comes from this machine's local wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PACKAGES := learner adapters_store service

.PHONY: setup chromium console-screenshots data run demo test test-unit check format readme-settings bench bench-ablation bench-quick bench-step chaos memory-check gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[learn,dev,cpu]'
	@touch $@

setup: $(STAMP)  ## the virtualenv: everything `make run` and `make test` need (no root)

# Debian's Chromium: the browser tests/console drives through Playwright (`playwright install`,
# which downloads browsers, is never run).
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "Chromium is missing: run 'sudo apt-get install chromium' (tests/console drives it)" >&2; exit 1; fi; }

# Fashion-MNIST as IDX files, from Debian (MIT licence): the benchmark's and the demo's data.
# `make run` and `make test` do not need it.
data:
	@test -f $(FMNIST) || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" >&2; exit 1; fi; }

run: setup  ## the main job: Redis, a Celery worker and the BentoML service; Ctrl-C stops all
	$(VENV)/bin/janus up

demo: setup data  ## a short class-incremental Janus-LoRA run that prints the accuracy matrix
	$(VENV)/bin/janus demo

test: setup chromium  ## every test tier: unit, integration (real Redis, Celery, bentoml serve, S3 server, Chromium), slow
	$(VENV)/bin/pytest

test-unit: setup
	$(VENV)/bin/pytest -m "not integration and not slow and not gpu"

check: setup  ## lint, format, types, and the import contracts of docs/DESIGN.md §2
	$(VENV)/bin/ruff check $(PACKAGES) tests docs scripts
	$(VENV)/bin/ruff format --check $(PACKAGES) tests docs scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff check --fix $(PACKAGES) tests docs scripts
	$(VENV)/bin/ruff format $(PACKAGES) tests docs scripts

readme-settings: setup  ## regenerate README.md's table of JANUS_* variables from the settings models
	$(PY) -c "from pathlib import Path; from service.envdoc import rewrite_readme; rewrite_readme(Path('README.md'))"

bench: setup data  ## the main table: janus, baselines, references; 3 orders, settings chosen on validation (about 35 min on 2 cores)
	$(VENV)/bin/janus bench cl --out runs/bench-cl

bench-ablation: setup data  ## the paper's ablation grid (none, OE, GR, DML, OE+GR, OE+DML, all), 3 orders (about 2 h)
	$(VENV)/bin/janus bench cl --methods janus --ablation --out runs/bench-ablation

bench-quick: setup data
	$(VENV)/bin/janus bench cl --quick --seeds 1 --out runs/bench-cl-quick

bench-step: setup data  ## step time of janus and baselines over seq-lora, interleaved (about 10 min)
	$(VENV)/bin/janus bench step --full --rounds 5 --threads 1 --methods janus,abl-oe-gr,inflora,lora-gpm --out runs/bench-step

chaos: setup  ## the chaos tier alone (also part of make test): attacks and faults against real processes, figures printed
	$(PY) -m pytest -m chaos -s -p no:cacheprovider

memory-check: setup  ## peak memory of a learn job streaming 5,000 and 20,000 JPEGs (about 25 min on 2 cores)
	$(PY) scripts/memory_check.py --images 5000 20000

console-screenshots: setup chromium  ## docs/console/*.png: the console's views in both themes, from its browser tests (about 1 min)
	JANUS_CONSOLE_SCREENSHOTS=docs/console $(VENV)/bin/pytest tests/console -p no:cacheprovider

gpu-check: setup  ## on a CUDA machine: the gpu tests and a short ViT-B/16 run (says so and exits 0 without CUDA)
	$(PY) scripts/gpu_check.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
