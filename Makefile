# One shared environment outside the checkout, so fresh clones (CI included) reuse it instead of
# downloading torch again. Override with `make test VENV=.venv`.
VENV ?= $(HOME)/.cache/vitmix/venv
PY := $(VENV)/bin/python

.PHONY: env demo test test-slow lint

env:
	@bash scripts/setup_env.sh $(VENV)

demo: env
	$(PY) -m vitmix train --model schemeformer_ppaa_t_e8_g4 --data fashion-mnist --img-size 32 --epochs 3 --max-train-batches 40 --max-val-batches 10 --base-lr 8e-3 --warmup-epochs 0.5 --no-ema --auto-augment none --mixup 0 --crop-scale 0.8 1 --re-prob 0.1 --out runs/demo --overwrite

test: env
	$(PY) -m pytest -q

test-slow: env
	$(PY) -m pytest -q -m slow

lint: env
	$(VENV)/bin/ruff check src tests benchmarks
