# One shared environment outside the checkout, so fresh clones (CI included) reuse it instead of
# downloading torch again. Override with `make test VENV=.venv`.
VENV ?= $(HOME)/.cache/vitmix/venv
PY := $(VENV)/bin/python

.PHONY: env demo test test-slow lint

env:
	@bash scripts/setup_env.sh $(VENV)

demo: env
	$(PY) -m vitmix demo --out runs/demo

test: env
	$(PY) -m pytest -q

test-slow: env
	$(PY) -m pytest -q -m slow

lint: env
	$(VENV)/bin/ruff check src tests benchmarks
