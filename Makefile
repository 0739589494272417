# The platform's commands. Two matter on a fresh machine:
#   make run    set everything up, run one full retraining cycle through Airflow, then serve the site
#   make test   set everything up and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
TORCH_INDEX_URL ?=
VENV := .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/datasets/chest_xray
QUICK ?=
export DATA QUICK TORCH_INDEX_URL

.PHONY: setup lock system-deps test stack-test stack-images run stop train validate mlflow data airflow dag-run repro status web bench clean-cache help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The developer lock (every extra, test included) and torch, hash-checked (scripts/install_locked.sh);
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu installs the CPU-only torch (no CUDA wheels).
$(VENV)/.installed: requirements/dev.txt requirements/torch.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	scripts/install_locked.sh $(PY) requirements/dev.txt --torch
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

lock:  ## recompile the locks in requirements/ from pyproject.toml (uv; pins kept, UPGRADE=1 upgrades)
	scripts/lock.sh

system-deps:  ## Debian packages used (rsync, chromium, docker-compose), installed when missing
	@scripts/system_deps.sh

setup: $(VENV)/.installed system-deps  ## create .venv and install every pinned package

test: setup  ## run the whole test suite, then the container test (skipped when no Docker engine can start, or SKIP_STACK_TEST=1)
	$(PY) -m pytest
	@if [ -n "$$SKIP_STACK_TEST" ]; then echo "make test: container test SKIPPED (SKIP_STACK_TEST=$$SKIP_STACK_TEST)"; exit 0; fi; \
	scripts/stack_test.sh; rc=$$?; if [ $$rc -eq 77 ]; then echo "make test: container test SKIPPED (no Docker engine)"; else exit $$rc; fi

stack-test: system-deps  ## build the images, run the compose stack and one quick retraining cycle in it, check it
	@scripts/stack_test.sh; rc=$$?; if [ $$rc -eq 77 ]; then echo "make stack-test: SKIPPED (no Docker engine)"; exit 0; else exit $$rc; fi

stack-images:  ## build the images (mlflow, airflow, web, orthanc) from the Dockerfile
	scripts/stack_images.sh

run: setup  ## full local stack: data -> MLflow -> Airflow retraining cycle -> web site (QUICK=1: minutes)
	$(PY) scripts/stack.py up

stop:  ## stop everything `make run` started
	$(PY) scripts/stack.py down

train: setup  ## train + evaluate once on DATA, without MLflow or Airflow
	$(PY) -m pipeline train --data $(DATA)

validate: setup  ## validation report of DATA
	$(PY) -m pipeline validate --data $(DATA)

mlflow: setup  ## MLflow tracking server in the foreground (SQLite + ./.mlflow by default)
	scripts/mlflow_server.sh

data: setup  ## import DATA into DVC as data/chest_xray, commit the pointer, dvc push, tell the local Airflow
	AIRFLOW_URL=$${AIRFLOW_URL:-http://127.0.0.1:8080} AIRFLOW_USER=$${AIRFLOW_USER:-admin} \
	AIRFLOW_PASSWORD=$${AIRFLOW_PASSWORD:-$$(cat .local/secrets/airflow_password 2>/dev/null)} \
		scripts/import_data.sh $(DATA)

airflow: setup  ## Airflow standalone (UI on :8080) on SQLite in ./.airflow, this project's DAG only
	AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
		$(VENV)/bin/airflow standalone

dag-run: setup  ## one forced run of the retraining DAG in-process (dag.test), no scheduler needed
	$(PY) tests/dags/run_dag.py --conf '{"force": true}'

repro: setup  ## the DVC pipeline (validate -> train -> evaluate) without Airflow
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

status: setup  ## which model version serves doctors, and why; what the local stack runs
	$(PY) -m pipeline status || true
	$(PY) scripts/stack.py status

web: setup  ## the web site under gunicorn in the foreground
	scripts/web_server.sh

bench: setup  ## every benchmark (long: see docs/benchmarks.md)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean-cache:  ## drop the preprocessing cache (it rebuilds itself)
	rm -rf .cache/preprocess
