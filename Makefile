# `make serve` and `make test` work on a fresh clone: each builds .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 9997
DEMO_MODELS := --launch gemma-3-270m --launch all-MiniLM-L6-v2

.PHONY: serve test lint install bench clean

# torch is pinned and installed before anything that depends on it: an unpinned torch
# would pull a multi-GB CUDA build.
$(VENV)/.demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[demo]'
	touch $@

# Engines missing here (vLLM's CPU build among them) run in environments of their own, which
# the server builds with uv on first launch (src/inferd/envs).
$(VENV)/.test: $(VENV)/.demo
	$(PIP) install --quiet -e '.[demo,test]'
	touch $@

install: $(VENV)/.demo

serve: $(VENV)/.demo
	$(VENV)/bin/inferd serve --host $(HOST) --port $(PORT) $(DEMO_MODELS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# The web UI's tests drive Debian's Chromium (Playwright's own browser download is not used).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

# The coding agents tests/test_agents.py drives (Codex CLI, Claude Code), pinned by
# tests/agents/package-lock.json; Node and npm come from Debian where the machine has none.
AGENTS := tests/agents/node_modules/.installed
$(AGENTS): tests/agents/package.json tests/agents/package-lock.json
	command -v npm >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm)
	npm ci --prefix tests/agents --no-audit --no-fund --loglevel=error
	touch $@

test: lint $(CHROMIUM) $(AGENTS)
	$(VENV)/bin/pytest

# inferd beside the engines alone (and Xinference, with XINFERENCE_VENV=path/to/its/venv),
# with the 1-to-256-client scaling run; tables and a plot land in benchmarks/results/compare/.
$(VENV)/.bench: $(VENV)/.demo
	$(PIP) install --quiet -e '.[demo,bench]'
	touch $@

bench: $(VENV)/.bench
	$(PY) benchmarks/compare.py --scaling $(if $(XINFERENCE_VENV),--xinference-venv $(XINFERENCE_VENV))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
