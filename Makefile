# modelyard — the two commands a new user needs: `make demo` and `make test`.
# Both do all the set-up themselves (Debian packages where needed, the virtualenv from the lock).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TOOLS ?= .venv-tools
UV := $(TOOLS)/bin/uv
TEST_PACKAGES := postgresql chromium nginx wrk
PYTEST_ARGS ?=
# Three kinds of test: plain values (unit), the real servers (integration), the closed loop (e2e).
TESTS := tests/unit tests/integration tests/e2e

.PHONY: help install system-deps demo lint test test-fast lock stack-up stack-down stack-status clean bench-serving bench-rollout bench-monitoring bench-chaos

help:
	@echo "make demo    set everything up, start the stack, run the lifecycle demo"
	@echo "make test    set everything up, check the layers (lint-imports), run the whole test suite"
	@echo "make test-fast   the layers and the unit tests only (no servers)"
	@echo "make lock    re-resolve requirements.lock from pyproject.toml"

# uv lives in its own small venv: `uv pip sync` removes from the project venv whatever the lock
# does not list (pip and uv included), so a second install must not depend on them.
$(UV):
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || bash infra/scripts/install-system-packages.sh python3-venv python3-pip
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check 'uv>=0.5'

# Bytecode is compiled once at install: every flow run, server and worker is a fresh interpreter,
# and where PYTHONDONTWRITEBYTECODE is set (containers, CI) each would compile its imports again.
$(BIN)/.installed: requirements.lock pyproject.toml $(UV)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(UV) pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

install: $(BIN)/.installed

demo: install
	bash infra/scripts/install-system-packages.sh nginx
	MODELYARD_SERVE_ANONYMOUS=$${MODELYARD_SERVE_ANONYMOUS:-true} $(BIN)/modelyard demo

system-deps:
	bash infra/scripts/install-system-packages.sh $(TEST_PACKAGES)

# The layer contracts of pyproject.toml ([tool.importlinter]): an upward import or a cycle fails
# here, before anything slow starts.
lint: install
	$(BIN)/lint-imports

test: lint system-deps
	bash infra/scripts/start-docker.sh
	bash infra/docker/build-base-image.sh modelyard/base:bookworm
	export MODELYARD_TEST_POSTGRES_URL="$$(bash infra/scripts/start-postgres.sh | tail -n 1)" && \
	export MODELYARD_DOCKER_BASE_IMAGE=modelyard/base:bookworm && \
	$(BIN)/python -m pytest -q -rfEs --durations=60 $(PYTEST_ARGS) $(TESTS)

test-fast: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests/unit

lock: $(UV)
	$(UV) pip compile -q pyproject.toml --extra test -o requirements.lock --python-version 3.11 --generate-hashes

stack-up: install
	$(BIN)/modelyard stack up
stack-down: install
	$(BIN)/modelyard stack down
stack-status: install
	$(BIN)/modelyard stack status

clean: stack-down
	rm -rf .modelyard

bench-serving: install
	bash infra/scripts/install-system-packages.sh wrk
	$(BIN)/python infra/bench/serving.py

bench-rollout: install
	bash infra/scripts/install-system-packages.sh wrk nginx
	bash infra/scripts/start-docker.sh && bash infra/docker/build-base-image.sh modelyard/base:bookworm
	MODELYARD_SERVE_ANONYMOUS=true MODELYARD_DOCKER_BASE_IMAGE=$${MODELYARD_DOCKER_BASE_IMAGE:-modelyard/base:bookworm} \
		$(BIN)/python infra/bench/rollout.py

bench-monitoring: install
	$(BIN)/python infra/bench/monitoring.py

# A prober through a real stack's stable endpoint while replicas, rollouts and the control plane
# fail one at a time; writes docs/benchmarks/chaos.md and chaos.png (about 8 minutes on 2 cores).
bench-chaos: install
	bash infra/scripts/install-system-packages.sh nginx
	$(BIN)/python infra/bench/chaos.py
