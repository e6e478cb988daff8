# Stash on Airflow: the two set-up commands.
#
#   make run    install what is missing, write the demo, start Airflow (UI on :8080)
#   make test   install what is missing (with the test extras), lint, type-check, test
#
# Both work on a fresh Debian machine as root, or as a user with sudo: Debian
# packages (restic, rclone, python3-venv; for the tests also postgresql,
# mariadb-server and redis-server) come from apt-get, Python packages from
# PyPI into .venv.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.NOTPARALLEL:

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# apt-get needs root: use sudo unless we are root already.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

AIRFLOW_HOME := $(CURDIR)/airflow-home
DEMO := $(CURDIR)/demo
PASSWORDS_FILE := $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated

# Everything `airflow standalone` (and any `airflow` command run against the demo)
# needs. The venv's bin comes first on PATH: standalone starts its components as
# `airflow ...` child processes.
AIRFLOW_ENV := \
	PATH="$(BIN):$$PATH" \
	AIRFLOW_HOME="$(AIRFLOW_HOME)" \
	AIRFLOW__CORE__DAGS_FOLDER="$(CURDIR)/dags" \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False \
	AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=30 \
	AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=10 \
	AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT=60 \
	AIRFLOW__STASH__MANIFESTS_DIR="$(DEMO)/manifests" \
	AIRFLOW__STASH__STATE_DIR="$(DEMO)/state" \
	AIRFLOW__STASH__RUNTIME=local

.PHONY: help run test test-fast lint system-packages airflow clean images images-local

help:
	@echo "make run        install, write the demo under demo/, start Airflow on http://localhost:8080"
	@echo "make test       install (with test extras), ruff, mypy, pytest"
	@echo "make test-fast  install (with test extras), pytest -m 'not slow'"
	@echo "make lint       ruff format --check, ruff check, mypy"
	@echo "make airflow ARGS='dags list'   any airflow command against the demo's Airflow"
	@echo "make images     build the agent and Airflow images (ENGINE=docker or podman)"
	@echo "make images-local  the same with podman, from a Debian base made here (no registry)"
	@echo "make clean      remove demo/, airflow-home/ and .venv/"

# --------------------------------------------------------------------------- install

# Debian packages, as `command:package` pairs; each target sets the ones it needs
# and only the missing ones are installed (with one `apt-get update` first).
APT_TOOLS := restic:restic
run: APT_TOOLS := restic:restic
# promtool checks monitoring/alerts.yml; Chromium drives the Stash page test. The image
# tests build and run the images with podman (runc: crun fails on some machines'
# cgroups; debootstrap: the Debian base image is made locally). The database tests
# start their own PostgreSQL, MariaDB and Redis servers (with the client tools the
# agent runs). `make run` needs none of them.
DB_TOOLS := pg_ctlcluster:postgresql psql:postgresql-client \
	mariadb-install-db:mariadb-server mariadb-dump:mariadb-client \
	redis-server:redis-server redis-cli:redis-tools
test: APT_TOOLS := restic:restic rclone:rclone promtool:prometheus chromium:chromium podman:podman runc:runc debootstrap:debootstrap $(DB_TOOLS)
test-fast: APT_TOOLS := restic:restic rclone:rclone promtool:prometheus $(DB_TOOLS)
images-local: APT_TOOLS := restic:restic rclone:rclone podman:podman runc:runc debootstrap:debootstrap

system-packages:
	@missing=""; \
	for pair in $(APT_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo ">>> installing with apt-get:$$missing"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

# The virtualenv, made with python3 (3.11 or newer; Debian 12 has 3.11). Debian
# ships venv/ensurepip in python3-venv, installed here when missing.
$(BIN)/python:
	@if ! command -v $(PYTHON) >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo ">>> installing python3 and python3-venv with apt-get"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
	fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed, found " + sys.version.split()[0] + " (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The project, editable, with its runtime dependencies (Airflow 3.3 from PyPI).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# The same plus the test extras (pytest, moto, ruff, mypy...).
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -e '.[test]'
	touch $@

# --------------------------------------------------------------------------- run

run: system-packages $(VENV)/.installed
	$(BIN)/stash demo demo
	mkdir -p "$(AIRFLOW_HOME)"
	@echo
	@echo "=================================================================="
	@echo " Stash on Airflow: starting 'airflow standalone' (Ctrl-C stops it)"
	@echo
	@echo " UI:      http://localhost:8080"
	@echo " Login:   user 'admin'; the password is generated on first start into"
	@echo "          $(PASSWORDS_FILE)"
	@echo "          (printed below as soon as it exists)"
	@echo " Stash:   http://localhost:8080/plugin/stash (the Stash page of the UI)"
	@echo " DAGs:    stash-backup.demo.demo-backup.deployment.stash-demo (every minute)"
	@echo "          stash-recovery.demo.demo-restore (once; restores into demo/restored)"
	@echo " Status:  .venv/bin/stash status --state-dir demo/state"
	@echo " Check:   .venv/bin/stash validate demo/manifests; .venv/bin/stash plan demo/manifests"
	@echo "=================================================================="
	@echo
	@( for _ in $$(seq 600); do \
	     if [ -s "$(PASSWORDS_FILE)" ]; then \
	       sleep 1; \
	       $(BIN)/python -c 'import json, sys; f = sys.argv[1]; [print(f">>> Airflow UI login (http://localhost:8080): user {u}, password {p}  (from {f})") for u, p in json.load(open(f)).items()]' "$(PASSWORDS_FILE)"; \
	       exit 0; \
	     fi; \
	     sleep 1; \
	   done ) &
	@# Airflow runs in its own process group. Ctrl-C (or SIGTERM, SIGHUP) sends SIGTERM
	@# to all of it, so each component shuts down cleanly; whatever is still there 30 s
	@# later (a LocalExecutor worker can hang on shutdown) is killed, so no Airflow
	@# process outlives `make run`.
	setsid env $(AIRFLOW_ENV) $(BIN)/airflow standalone & af=$$!; \
	stop() { \
	  trap - INT TERM HUP; \
	  kill -0 -- -$$af 2>/dev/null || return 0; \
	  echo ">>> stopping Airflow"; kill -TERM -- -$$af 2>/dev/null || true; \
	  for _ in $$(seq 30); do kill -0 -- -$$af 2>/dev/null || return 0; sleep 1; done; \
	  echo ">>> killing what is left of Airflow (process group $$af)"; \
	  kill -KILL -- -$$af 2>/dev/null || true; \
	}; \
	trap stop INT TERM HUP; \
	wait $$af || true; stop

# Any airflow command against the demo's Airflow, e.g. make airflow ARGS="dags list".
airflow: $(VENV)/.installed
	env $(AIRFLOW_ENV) $(BIN)/airflow $(ARGS)

# --------------------------------------------------------------------------- test

# Test files run on two workers (pytest-xdist), a file's tests on one worker so that its
# module fixtures (database servers, moto, a Chromium) start once: most tests wait on
# restic, servers or pods, and the suite took 12:28 this way against 26 minutes one
# file after another on the same loaded 2-core machine. PYTEST_WORKERS= runs them in
# one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy stash_plugin  # operators/ and sensors/ too, as stash_plugin.operators/.sensors

test: system-packages lint
	PATH="$(BIN):$$PATH" STASH_REQUIRE_PODMAN=1 $(BIN)/pytest $(PYTEST_WORKERS)

test-fast: system-packages $(VENV)/.installed-test
	PATH="$(BIN):$$PATH" $(BIN)/pytest $(PYTEST_WORKERS) -m "not slow"

# --------------------------------------------------------------------------- images

ENGINE ?= podman
AGENT_IMAGE ?= stash-airflow/agent:0.1.0
AIRFLOW_IMAGE ?= stash-airflow/airflow:0.1.0

# The two images, from the registry's debian:bookworm-slim.
images:
	$(ENGINE) build --network=host -f Dockerfile.agent -t $(AGENT_IMAGE) .
	$(ENGINE) build --network=host -f Dockerfile.airflow -t $(AIRFLOW_IMAGE) .

# The same on a machine that reaches no container registry: the base image is made
# with debootstrap and both images are built into the test suite's podman store (the
# one `make test` uses; see tests/containers.py).
images-local: system-packages $(VENV)/.installed-test
	$(BIN)/python tests/containers.py

clean:
	rm -rf demo airflow-home .venv
