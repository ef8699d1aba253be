# The environments live in the checkout (.venv, .venv-oldest) and are built from the locks by uv;
# uv's download cache (~/.cache/uv) makes a fresh one take seconds.
VENV ?= .venv
OLDEST_VENV ?= .venv-oldest
PY := $(VENV)/bin/python

.PHONY: env env-oldest demo test test-oldest test-slow lint lock

env:
	@bash scripts/setup_env.sh $(VENV)

env-oldest:
	@bash scripts/setup_env.sh $(OLDEST_VENV) oldest

demo: env
	$(PY) -m vitmix train --data fashion-mnist --time-budget 2.5 --amp bf16 --out runs/demo --overwrite

test: env
	$(PY) -m pytest -q

# The whole fast suite on the oldest versions pyproject.toml admits.
test-oldest: env-oldest
	$(OLDEST_VENV)/bin/python -m pytest -q

test-slow: env
	$(PY) -m pytest -q -m slow

lint: env
	$(VENV)/bin/ruff check src tests benchmarks

# Re-resolve both locks after a change to pyproject.toml's dependencies (needs the network).
# `uv pip compile` keeps the versions requirements/oldest.txt already pins where they still
# fit, so a lowered floor takes effect only for the packages named in OLDEST_UPGRADE, e.g.
# `make lock OLDEST_UPGRADE="-P torch -P torchvision"`.
OLDEST_UPGRADE ?=
lock:
	bash scripts/uv.sh lock
	bash scripts/uv.sh pip compile pyproject.toml --extra dev --extra export --extra data --resolution lowest-direct \
		--python-version 3.11 --generate-hashes --quiet -o requirements/oldest.txt $(OLDEST_UPGRADE)
