# Multi-task classification platform. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TRITON_VENV ?= .venv-triton
PY := $(VENV)/bin/python
PROFILE ?= quick
PYTEST_ARGS ?=
SOAK_DURATION ?= 600
SOAK_ARGS ?=

export AWS_EC2_METADATA_DISABLED := true
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install venv triton-env browser-deps prometheus run models push pull test test-unit lint fmt typecheck bench soak clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

install: venv triton-env ## Create both virtual environments (app + Triton server)

venv: $(VENV)/.installed ## The app environment: facade, dashboard, exporter, batch jobs, tests
$(VENV)/.installed: pyproject.toml requirements/offline-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[api,dashboard,export,batch,dev]'
	$(PY) -m pip install -q --no-deps -r requirements/offline-assets.txt
	touch $@

triton-env: $(TRITON_VENV)/.installed ## The Triton server environment: tritonserver 2.51 + its Python stub's packages
$(TRITON_VENV)/.installed: requirements/triton.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q --no-deps nvidia-pytriton==0.7.0
	$(TRITON_VENV)/bin/python -m pip install -q -r requirements/triton.txt
	touch $@

browser-deps: ## Debian's Chromium for the end-to-end browser tests
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

prometheus: ## Debian's Prometheus (make run's metrics server; promtool for the rule tests); skipped with a message where apt cannot install it
	@command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || echo "warning: could not install Prometheus (apt-get install prometheus as root); make run goes on without it"

run: install prometheus ## Build demo models if missing, start S3 (SeaweedFS) + Triton + facade + dashboard + Prometheus, restart any that dies; Ctrl-C stops all
	$(PY) -m serving.stack

models: venv ## Train, export and publish the three models and the two tiny text variants (PROFILE=quick|full)
	$(PY) -m export build --profile $(PROFILE)

push: venv ## Upload model_repository/ to S3 (MTC_S3_URL, endpoint and credentials from the environment)
	$(PY) -m export push

pull: venv ## Download the S3 model repository into model_repository/
	$(PY) -m export pull

test: install browser-deps prometheus ## Run every test (unit, real Triton, S3, facade, browser)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## Fast tests only (no servers)
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: venv ## ruff + mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy .

fmt: venv ## Format and autofix
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: install ## Benchmarks: report in bench/results/
	$(PY) -m bench

soak: install ## Soak + faults: 64 clients, Triton frozen then killed (SOAK_DURATION=600, SOAK_ARGS=...); bench/results/soak/
	$(PY) -m bench.soak --duration $(SOAK_DURATION) $(SOAK_ARGS)

clean: ## Remove environments and caches (keeps model_repository/)
	rm -rf $(VENV) $(TRITON_VENV) .mypy_cache .ruff_cache .pytest_cache
