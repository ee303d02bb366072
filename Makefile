# fracgen: `make help` lists the targets. Nothing here runs git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/1p-frac
# numba's compiled kernels persist here between runs (the first build compiles them: a few seconds).
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
TRAIN := $(BIN)/fracgen-train
# SMALL=1, the CPU quick start: the data are made here, nothing is downloaded. A tiny 1p-frac build (16 classes of
# 64 px) to pre-train on, and a small labelled ImageFolder (fracgen-train toy-data) to fine-tune on.
TINY_DATA ?= out/1p-frac-tiny
TINY_BUILD := --sigma 3.5 --delta 0.1 --L 16 --size 64 --points 5000 --shard-size 8
TOY_DATA ?= out/toy-images
TOY_DATA_STEP = $(if $(SMALL),$(if $(FT_DATA),,@[ -d $(TOY_DATA)/train ] || $(TRAIN) toy-data $(TOY_DATA)))
# Which make variable gave which option, so that the trainer's errors name what the user typed (train/make_words.py).
pretrain: export FRACGEN_TRAIN_MAKE = --data=DATA data.path=DATA --out=RUN
finetune: export FRACGEN_TRAIN_MAKE = --data=FT_DATA data.path=FT_DATA --checkpoint=CKPT finetune.checkpoint=CKPT --out=RUN
repro-small: export FRACGEN_TRAIN_MAKE = --cifar=FT_DATA --dataset=DATA --out=RUN
sweep: export FRACGEN_TRAIN_MAKE = --data=FT_DATA --out=RUN

.DEFAULT_GOAL := help
.PHONY: help install install-dev demo publish-dry test test-quick readme-check bench bench-contours bench-3d bench-search bench-released bench-families lint pretrain finetune repro-small bench-train sweep clean

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

bench: install ## Builder speed: the default build cold and warm, per-stage costs, memory; RCDB and VisualAtom per stored image.
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_contours.py --images 100 --build 0

bench-contours: install ## RCDB and VisualAtom per stored image; against the released scripts with RELEASED_RCDB=DIR RELEASED_VISUALATOM=DIR (checkouts; pip install noise==1.2.2).
	$(BIN)/python benchmarks/bench_contours.py --images 300 $(if $(RELEASED_RCDB),--released-rcdb $(RELEASED_RCDB)) $(if $(RELEASED_VISUALATOM),--released-visualatom $(RELEASED_VISUALATOM))

bench-3d: install ## 3D-OFDB: CPU per stored image against the released pipeline, acceptance, pixels on the same draws (RELEASED=OFDB/3d-ofdb-generator RELEASED_PY=its python; without them fracgen's figures only).
	$(BIN)/python benchmarks/bench_ofdb3d.py --categories 100 --rate-categories 1000 $(if $(RELEASED),--released-dir $(RELEASED) --released-python $(RELEASED_PY))

bench-search: install ## FractalDB/OFDB category search: 1000 categories across the cores, with its acceptance rate.
	$(BIN)/python benchmarks/bench_search.py --categories 1000

bench-released: install ## 1p-frac CPU per accepted image and per render; against the released generator with RELEASED_1PFRAC=DIR (a checkout of SUPER-TADORY/1p-frac).
	$(BIN)/python benchmarks/bench_released.py $(if $(RELEASED_1PFRAC),--released $(RELEASED_1PFRAC) --images 10 --own-stream)

bench-families: install ## Every family: bytes per image, CPU ms per image, images/s, its headline set's size and CPU (REAL_IMAGE=PHOTO for `real`).
	$(BIN)/python benchmarks/bench_families.py $(if $(REAL_IMAGE),--real-image $(REAL_IMAGE))

lint: install-dev ## ruff over the packages and tests.
	$(BIN)/ruff check fracgen train tests benchmarks

pretrain: install-dev ## LPCE pre-training on DATA (default $(OUT)) into RUN (runs/pretrain); SMALL=1: the CPU quick start.
	$(if $(SMALL),$(if $(DATA),,@[ -f $(TINY_DATA)/build.json ] || $(BIN)/fracgen build $(TINY_BUILD) \
		$$([ -d $(TINY_DATA) ] && echo --resume) $(TINY_DATA)),$(if $(DATA),,@[ -f $(OUT)/_info.json ] || \
		{ echo "error: no dataset in $(OUT): make demo builds it (or DATA=<a fracgen build>; SMALL=1: the CPU quick start)" >&2; exit 2; }))
	$(TRAIN) pretrain $(if $(SMALL),--config tiny) --data $(or $(DATA),$(if $(SMALL),$(TINY_DATA),$(OUT))) \
		--out $(or $(RUN),runs/$(if $(SMALL),tiny,pretrain)) $(ARGS)

finetune: install-dev ## Fine-tune on FT_DATA (default cifar10, downloaded) from CKPT (omit: scratch) into RUN; SMALL=1: offline, tiny.
	$(TOY_DATA_STEP)
	$(if $(SMALL),$(if $(CKPT),,@[ -f runs/tiny/model.safetensors ] || \
		{ echo "error: runs/tiny holds no pre-trained model: make pretrain SMALL=1 first (or CKPT=<run folder>; CKPT=none: scratch)" >&2; exit 2; }))
	$(TRAIN) finetune $(if $(SMALL),--config tiny-finetune) --data $(or $(FT_DATA),$(if $(SMALL),$(TOY_DATA),cifar10)) \
		$(if $(filter none,$(CKPT)),,$(if $(or $(CKPT),$(SMALL)),--checkpoint $(or $(CKPT),runs/tiny))) \
		--out $(or $(RUN),runs/$(if $(SMALL),tiny-finetune,finetune)) $(ARGS)

repro-small: install-dev ## GPU: 1p-frac pre-training vs scratch on FT_DATA (default CIFAR-10, downloaded), several budgets; SMALL=1: CPU check.
	$(TOY_DATA_STEP)
	$(TRAIN) repro-small $(if $(SMALL),--cpu-check --budgets 5 --finetune-seconds 5) \
		--cifar $(or $(FT_DATA),$(if $(SMALL),$(TOY_DATA),cifar10)) $(if $(DATA),--dataset $(DATA)) \
		--out $(or $(RUN),runs/repro-small$(if $(SMALL),-cpu)) $(ARGS)

sweep: install-dev ## Build + pre-train + fine-tune over a grid (SWEEP=sweep-delta | sweep-L | sweep-sigma | a YAML; FT_DATA=...; SMALL=1: sweep-cpu).
	$(TOY_DATA_STEP)
	$(TRAIN) sweep $(or $(SWEEP),$(if $(SMALL),sweep-cpu,sweep-delta)) \
		$(if $(or $(FT_DATA),$(SMALL)),--data $(or $(FT_DATA),$(TOY_DATA))) $(if $(RUN),--out $(RUN)) $(ARGS)

bench-train: install-dev ## Trainer throughput: model only, streaming loader, GPU-resident data (DATA=..., ARGS=...).
	$(BIN)/python -m train.experiments.bench $(if $(DATA),--data $(DATA)) $(ARGS)

clean: ## Remove build outputs and caches (not .venv).
	rm -rf out runs .cache .pytest_cache .ruff_cache
