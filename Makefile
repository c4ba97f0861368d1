# DenseFormer Lab. `make help` lists the targets. Every target uses the virtual environment .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install first. torch==2.13.0 resolves to the local CPU wheel on the reference
# machine and to PyPI's CUDA build elsewhere. Override, e.g.:
#   make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
#   make install TORCH_SPEC=            # keep whatever torch the venv already has
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
NAME ?=

.DEFAULT_GOAL := help
.PHONY: help install train test test-all sweep aggregate tensorboard data-owt2 data-pg19 data-wikitext103 bench-data \
	clean clean-all

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed  ## create .venv and install the suite (torch pinned by TORCH_SPEC)

train: install  ## train the main job (12-block DenseFormer, ~5 min on 2 CPU cores); ARGS="key=value ..."
	$(PY) run.py $(ARGS)

test: install  ## run the test suite (slow tests excluded)
	$(PY) -m pytest

test-all: install  ## run every test, the slow ones too
	$(PY) -m pytest -m ""

sweep: install  ## a named sweep + its CSVs, also when a job fails: make sweep NAME=k ARGS="dilation=1,2,4"
	@test -n "$(NAME)" || { echo "make sweep needs NAME=<folder under logs/sweeps>"; exit 2; }
	$(PY) run.py -m name=$(NAME) $(ARGS); status=$$?; \
	$(PY) -m denselab.aggregate logs/sweeps/$(NAME) > /dev/null || true; exit $$status

aggregate: install  ## rewrite the CSVs of a sweep folder: make aggregate NAME=k
	$(PY) -m denselab.aggregate logs/sweeps/$(NAME)

tensorboard: install  ## serve TensorBoard over every run and sweep in logs/
	$(VENV)/bin/tensorboard --logdir logs

data-owt2: install  ## download + tokenize OpenWebText2 once into data/owt2-gpt2/ (needs internet; all cores)
	$(PY) -m denselab.data data=owt2 $(ARGS)

data-pg19: install  ## download + tokenize PG-19 once into data/pg19-gpt2/ (needs internet)
	$(PY) -m denselab.data data=pg19 $(ARGS)

data-wikitext103: install  ## download + tokenize WikiText-103 (raw) once into data/wikitext103-gpt2/ (needs internet)
	$(PY) -m denselab.data data=wikitext103 $(ARGS)

bench-data: install  ## print tokenization tokens/s per worker and batch-draw time vs a training step
	$(PY) benchmarks/data_bench.py $(ARGS)

clean:  ## delete logs/ (runs, sweeps, checkpoints); keeps the token cache and .venv
	rm -rf logs .pytest_cache

clean-all: clean  ## also delete the token cache data/ and .venv
	rm -rf data $(VENV)
