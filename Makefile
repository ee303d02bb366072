# fracgen: `make help` lists the targets. Nothing here runs git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/1p-frac
# numba's compiled kernels persist here between runs (the first build compiles them: a few seconds).
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.DEFAULT_GOAL := help
.PHONY: help install install-dev demo publish-dry test test-quick readme-check bench bench-contours bench-3d bench-search bench-released lint pretrain finetune repro-small bench-train sweep clean

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's|$$(OUT)|$(OUT)|g' \
		| awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.builder: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,test]'
	touch $@ $(VENV)/.builder

install: $(VENV)/.builder ## Create .venv with the builder only (numpy, numba, pillow, click, ...).

install-dev: $(VENV)/.dev ## Create .venv with the builder, the trainer (torch, timm) and the test tools.

demo: install ## Build the default 1p-frac dataset (sigma 3.5, Delta 0.1, L 1000) into $(OUT).
	$(BIN)/fracgen build --sigma 3.5 --delta 0.1 --L 1000 --overwrite $(OUT)
	$(BIN)/fracgen verify $(OUT)

publish-dry: install ## List what push-to-hub would send for $(OUT) (LICENSE=ID required, REPO=USER/NAME; contacts nothing).
	$(if $(LICENSE),,$(error make publish-dry needs the dataset's licence for its card: LICENSE=ID, e.g. LICENSE=cc-by-4.0))
	$(BIN)/fracgen push-to-hub $(OUT) --repo-id $(or $(REPO),USER/NAME) --license $(LICENSE) --dry-run $(OUT)-publish

test: install-dev ## Run the test suite (CPU only, no network).
	$(BIN)/python -m pytest -q

test-quick: install-dev ## The tests without the slow ones (multi-process, signals, README, wheel): for the edit loop.
	$(BIN)/python -m pytest -q -m "not slow"

readme-check: install-dev ## Run the builder and publishing blocks of README.md and docs/, in order, at toy size.
	$(BIN)/python scripts/readme_check.py

bench: install ## Builder speed: default build cold and warm, chaos game alone, per-stage costs, memory; RCDB and VisualAtom per stored image.
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_contours.py --images 100 --build 0

bench-contours: install ## RCDB and VisualAtom per image against the released drawing restated (goal: 100x).
	$(BIN)/python benchmarks/bench_contours.py --images 300

bench-3d: install ## 3D-OFDB: CPU per stored image against the released pipeline, acceptance, pixels on the same draws (RELEASED=OFDB/3d-ofdb-generator RELEASED_PY=its python; without them fracgen's figures only).
	$(BIN)/python benchmarks/bench_ofdb3d.py --categories 20 --rate-categories 1000 $(if $(RELEASED),--released-dir $(RELEASED) --released-python $(RELEASED_PY))

bench-search: install ## FractalDB/OFDB category search: 1000 categories across the cores (goal: < 15 s on 2).
	$(BIN)/python benchmarks/bench_search.py --categories 1000

bench-released: install ## 1p-frac: CPU time against the released generator restated, per image and per render.
	$(BIN)/python benchmarks/bench_released.py --images 5

lint: install-dev ## ruff over the packages and tests.
	$(BIN)/ruff check fracgen train tests benchmarks

pretrain: install-dev ## LPCE pre-training on a fracgen dataset (DATA=$(OUT) RUN=runs/pretrain ARGS=...).
	$(BIN)/python -m train pretrain --data $(or $(DATA),$(OUT)) --out $(or $(RUN),runs/pretrain) $(ARGS)

finetune: install-dev ## Fine-tune on FT_DATA (default cifar10) from CKPT=...; omit CKPT for the scratch baseline.
	$(BIN)/python -m train finetune --data $(or $(FT_DATA),cifar10) $(if $(CKPT),--checkpoint $(CKPT)) --out $(or $(RUN),runs/finetune) $(ARGS)

repro-small: install-dev ## GPU: 1p-frac pre-training vs scratch on CIFAR-10 (torchvision, or ARGS="--cifar DIR|TARBALL"), several budgets.
	$(BIN)/python -m train repro-small --out runs/repro-small $(ARGS)

sweep: install-dev ## Build + pre-train + fine-tune over a grid (SWEEP=sweep-delta | sweep-L | sweep-sigma | a YAML path).
	$(BIN)/python -m train sweep $(or $(SWEEP),sweep-delta) $(ARGS)

bench-train: install-dev ## Trainer throughput: model only, streaming loader, GPU-resident data (DATA=..., ARGS=...).
	$(BIN)/python -m train.experiments.bench $(if $(DATA),--data $(DATA)) $(ARGS)

clean: ## Remove build outputs and caches (not .venv).
	rm -rf out runs .cache .pytest_cache .ruff_cache
