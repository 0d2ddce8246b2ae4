# diffpose-bench. `make help` lists the targets. Every target installs what it needs first (make setup).
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
# The torch build. The default is the CPU wheel; GPU users pick theirs, e.g.
#   make setup TORCH_SPEC='torch==2.13.0' TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
RESULTS ?= results
STORES ?= stores
MOCAP_ROOT ?= ../shared/data/mocap17
SUITE ?= ablations/demo.toml
SEARCH ?= ablations/search_demo.toml
PYTEST_ARGS ?=
# Where `make bench` measures: auto (CUDA with bf16 autocast, then MPS, else the CPU), cpu, cuda, cuda:1, mps
DEVICE ?= auto

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOOPBACK := scripts/loopback-ns
export PIP_DISABLE_PIP_VERSION_CHECK := 1

MLFLOW_PORT ?= 5000

.PHONY: help setup test lint prepare bench bench-scale gpu-check ablate tune report mlflow-ui clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install torch (TORCH_SPEC) and the project (idempotent)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: setup ## Run the tests (in a loopback-only network namespace when no RAY_ADDRESS is set)
	$(LOOPBACK) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup ## ruff
	$(BIN)/ruff check diffpose benchmark reports tests

$(STORES)/mocap17/meta.json: | setup
	$(BIN)/diffpose-bench prepare --dataset mocap17 --root $(MOCAP_ROOT) --out $(STORES)/mocap17

prepare: $(STORES)/mocap17/meta.json ## Prepare the store of the shipped mocap stand-in

bench: setup $(STORES)/mocap17/meta.json ## Speed and memory benchmarks on DEVICE (default: the loop's pick) -> bench.json
	$(BIN)/diffpose-bench bench --store $(STORES)/mocap17 --out bench.json --device $(DEVICE)

bench-scale: setup $(STORES)/mocap17/meta.json ## Report, trial lookup, suite expansion at 10,000 runs; per-trial overhead -> bench_scale.json
	$(LOOPBACK) $(BIN)/python -m benchmark.scale --results $(RESULTS)/scale --store $(STORES)/mocap17 --out bench_scale.json

gpu-check: setup $(STORES)/mocap17/meta.json ## On a CUDA machine (<= 5 min): CUDA tests, an autocast epoch of DiffPose full and refiner, bench -> RESULTS/gpu_check.json
	$(BIN)/python -m benchmark.gpu_check --store $(STORES)/mocap17 --out $(RESULTS)/gpu_check.json

ablate: setup ## Run the ablation suite SUITE (default ablations/demo.toml) on Ray, then the report
	$(LOOPBACK) $(BIN)/diffpose-bench ablate --suite $(SUITE) --results $(RESULTS)

tune: setup ## Hyperparameter search SEARCH (default ablations/search_demo.toml) with Optuna on Ray; exports the best config
	$(LOOPBACK) $(BIN)/diffpose-bench tune --search $(SEARCH) --results $(RESULTS)

report: setup ## Rebuild the report of SUITE (a suite or search file) from MLflow (no trials run)
	$(BIN)/diffpose-bench report --suite $(SUITE) --results $(RESULTS)

mlflow-ui: setup ## Serve the MLflow UI of RESULTS on http://127.0.0.1:5000 (MLFLOW_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
		--backend-store-uri sqlite:///$(abspath $(RESULTS))/mlflow.db --default-artifact-root $(abspath $(RESULTS))/artifacts

clean: ## Remove stores, results, bench.json and bench_scale.json (not .venv)
	rm -rf $(STORES) $(RESULTS) bench.json bench_scale.json
