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
SCALE ?= mini
TABLES := table1 table2 table3 table4 table5 table6 table7 table8 longseq
FIGURES := fig2b fig3 fig3c fig4 fig5 fig6 fig7 fig8 fig9 fig10 fig11 fig12 fig14 fig15

.DEFAULT_GOAL := help
.PHONY: help install train test lint test-all sweep aggregate plan tensorboard data-owt2 data-pg19 data-wikitext103 bench bench-league bench-data \
	clean clean-all report claims figures all league $(TABLES) $(FIGURES)

help:  ## list the targets
	@grep -E '^[a-z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

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

lint: install  ## ruff over the code (pyproject's [tool.ruff.lint])
	$(VENV)/bin/ruff check src tests benchmarks run.py

test-all: install  ## run every test, the slow ones too
	$(PY) -m pytest -m ""

sweep: install  ## a named sweep + its CSVs, also when a job fails: make sweep NAME=k ARGS="dilation=1,2,4"
	@test -n "$(NAME)" || { echo "make sweep needs NAME=<folder under logs/sweeps>"; exit 2; }
	$(PY) run.py -m name=$(NAME) $(ARGS); status=$$?; \
	$(PY) -m denselab.aggregate logs/sweeps/$(NAME) > /dev/null || true; exit $$status

aggregate: install  ## rewrite the CSVs of a sweep folder: make aggregate NAME=k
	$(PY) -m denselab.aggregate logs/sweeps/$(NAME)

# -- the paper's tables and figures: SCALE=smoke | mini (default) | paper; finished runs are skipped --------
table1:   ## Table 1: DenseFormer vs deeper Transformers and Skips with Gains, batch 400
table2:   ## Table 2: same training time (4x5-DenseFormer, then a Transformer given its time)
table3:   ## Table 3: sparsity patterns (Last K, Connect to Last, 12x1, 4x5)
table4:   ## Table 4: PG-19, batch 128, 48k steps (SCALE=paper trains on data=pg19)
table5:   ## Table 5: delayed DWA training (α frozen until step N)
table6:   ## Table 6: Table 1 at batch 128, dilations 1, 2, 4
table7:   ## Table 7: sparsity patterns at batch 128
table8:   ## Table 8: width sweep at 24 blocks, batch 128
longseq:  ## §4.1: sequences of 512, batch 128
figures:  ## every figure: 2b, 3a/b, 3c, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15 (see experiments/)
all:      ## every table, then every figure
league:   ## beyond the paper: every depth-mixing node vs the Transformer, paired seeds (experiments/league/)

$(TABLES) $(FIGURES) league: install
	$(PY) run.py -m experiment=$@ scale=$(SCALE) $(if $(and $(filter table4,$@),$(filter paper,$(SCALE))),data=pg19) $(ARGS)

figures: $(FIGURES)
all: $(TABLES) figures

plan: install  ## the jobs of a table, which are done, and the GPU-hours of the rest: make plan E=table1 SCALE=paper
	$(PY) -m denselab.plan experiment=$(E) scale=$(SCALE) $(ARGS)

report: install  ## redraw a report from its runs: make report E=table1 SCALE=mini
	$(PY) -m denselab.report experiment=$(E) scale=$(SCALE) $(ARGS)

claims: install  ## the paper's claims against the committed results: experiments/claims.csv, experiments/README.md
	$(PY) -m denselab.report --claims

tensorboard: install  ## serve TensorBoard over every run and sweep in logs/
	$(VENV)/bin/tensorboard --logdir logs

data-owt2: install  ## download + tokenize OpenWebText2 once into data/owt2-gpt2/ (needs internet; all cores)
	$(PY) -m denselab.data data=owt2 $(ARGS)

data-pg19: install  ## download + tokenize PG-19 once into data/pg19-gpt2/ (needs internet)
	$(PY) -m denselab.data data=pg19 $(ARGS)

data-wikitext103: install  ## download + tokenize WikiText-103 (raw) once into data/wikitext103-gpt2/ (needs internet)
	$(PY) -m denselab.data data=wikitext103 $(ARGS)

bench: install  ## DWA speed: Transformer vs naive vs App. A.2 vs ours, compile, decoding (CSV in experiments/bench/)
	$(PY) benchmarks/dwa_bench.py $(ARGS)

bench-league: install  ## every league node's training step and inference speed side by side: make bench-league SCALE=mini
	$(PY) benchmarks/league_speed.py --scale $(SCALE) $(ARGS)

bench-data: install  ## print tokenization tokens/s per worker and batch-draw time vs a training step
	$(PY) benchmarks/data_bench.py $(ARGS)

clean:  ## delete logs/ (runs, sweeps, checkpoints); keeps the token cache and .venv
	rm -rf logs .pytest_cache

clean-all: clean  ## also delete the token cache data/ and .venv
	rm -rf data $(VENV)
