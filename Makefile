# FIRST — the two commands: `make run` (whole system, offline) and `make test` (full suite).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
REQS   := requirements.txt requirements-dev.txt requirements-endpoint.txt requirements-agents.txt \
          hpc_functions/requirements.txt \
          pyproject.toml

.PHONY: run up down test unit integration e2e lint audit bench clean browser agents

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# pip as chalice allows it (chalice pins pip<26.3; a newer one would be downgraded again).
	$(PY) -m pip install --quiet --upgrade "pip<26.3"
	# torch first, pinned: its CPU wheel is what this machine has; a looser spec pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The local compute endpoint's engine (globus-compute-endpoint) beside transformers: it pins
	# click<8.4, huggingface-hub needs click>=8.4.2, so it goes in without its click pin and
	# `pip check` names that one conflict (docs/hpc.md, "One environment, one override").
	$(PY) -m pip install --quiet --no-deps -r requirements-endpoint.txt
	# The OpenAI Agents SDK's websockets<17 pin, likewise (requirements-agents.txt says why).
	$(PY) -m pip install --quiet --no-deps -r requirements-agents.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)  ## the whole system in the foreground; Ctrl-C stops it
	$(PY) -m offline.stack run

up: $(STAMP)   ## the same in the background; returns once healthy (.first/local.env)
	$(PY) -m offline.stack up

down:
	$(PY) -m offline.stack down

test: $(STAMP) browser agents ## the full suite: lint, types, unit, integration, end-to-end
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

# The operator page's browser test drives Debian's chromium (Playwright's own browser download is
# not reachable here): installed with apt when missing and apt can be used (root, or sudo without
# a password); otherwise one line says what to run, and the browser test fails naming it.
browser:
	@command -v chromium >/dev/null 2>&1 && exit 0; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else SUDO=none; fi; \
	if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: chromium is missing and cannot be installed from here; run 'sudo apt-get install -y chromium' (the browser test fails until then)"; \
	  exit 0; fi; \
	echo "make: installing Debian's chromium for the browser test (apt-get)"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null \
	  || echo "make: 'apt-get install chromium' failed; the browser test fails until chromium is on PATH"

# The coding agents the e2e tests drive (Claude Code: tests/e2e/test_claude_code.py;
# Codex CLI: tests/e2e/test_codex.py),
# from npm into a cache under .first/ once: a stamp names the packages, so a changed list
# reinstalls. node/npm come from Debian's apt when missing (as chromium above); otherwise one
# line says what to run, and the agent tests skip naming it.
AGENT_PACKAGES = @anthropic-ai/claude-code@2.1.328 @openai/codex@0.169.0
AGENTS_DIR = .first/npm
agents:
	@test "$$(cat $(AGENTS_DIR)/.packages 2>/dev/null)" = "$(AGENT_PACKAGES)" && exit 0; \
	if ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else SUDO=none; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make: npm is missing and cannot be installed from here; run 'sudo apt-get install -y nodejs npm' (the agent tests skip until then)"; \
	    exit 0; fi; \
	  echo "make: installing Debian's nodejs and npm for the agent tests (apt-get)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null \
	    || { echo "make: 'apt-get install nodejs npm' failed; the agent tests skip until npm is on PATH"; exit 0; }; \
	fi; \
	echo "make: installing $(AGENT_PACKAGES) into $(AGENTS_DIR)"; \
	mkdir -p $(AGENTS_DIR) && npm install --prefix $(AGENTS_DIR) --no-audit --no-fund --loglevel=error $(AGENT_PACKAGES) \
	  && echo "$(AGENT_PACKAGES)" > $(AGENTS_DIR)/.packages \
	  || echo "make: 'npm install $(AGENT_PACKAGES)' failed; the agent tests skip until it succeeds"

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest tests/integration

e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

audit: $(STAMP) ## pip-audit of the pinned requirements; fails only on a known vulnerability
	$(PY) .ci/audit.py

bench: $(STAMP) ## the interactive and load benchmarks (the `make up` stack, or one of their own), constrained decoding, jobs and the dialects' added latency, then the tables of README.md and docs/performance.md from their result files
	$(PY) -m bench.interactive --requests 200 --concurrency 1 32 --max-tokens 1
	$(PY) -m bench.load --clients 32 256 --requests-per-client 3 --max-tokens 1
	$(PY) -m bench.constrained --runs 5 --max-tokens 128
	$(PY) -m bench.jobs --jobs 10
	$(PY) -m bench.dialects --calls 50 --max-tokens 1
	$(PY) -m bench.report

clean:
	rm -rf $(VENV) .first
