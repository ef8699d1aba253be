"""benchmarks/fashion_mnist_budget.py: runs merge into one JSON, and the tables group them by
budget with the mean and sample standard deviation over seeds."""

import importlib.util
import json
import random
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fashion_mnist_budget.py"


@pytest.fixture()
def budget(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fashion_mnist_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    monkeypatch.setattr(module, "OUT_JSON", tmp_path / "fashion_mnist_budget.json")
    return module


def fake_run(config, seed, minutes, top1, rng):
    val = top1 + rng.uniform(-1, 1)
    return {
        "config": config, "model": "m", "model_kwargs": {}, "seed": seed, "minutes": minutes,
        "summary": {"trained": {"top1": top1}, "deployed": {"top1": top1},
                    "val": {"trained": {"top1": val}}, "epochs": rng.randint(5, 20)},
        "process_seconds": minutes * 60.0,
        "curve": [{"seconds": 60.0 * m, "val_top1": val, "ema_top1": None}
                  for m in range(1, 4)],
        "cca_weights": {"stages.0.blocks.0.mlp": [0.5, 0.3, 0.0]} if config != "dense" else {},
    }


def test_merge_replaces_only_the_same_configuration_seed_and_budget(budget):
    rng = random.Random(0)
    budget._merge(fake_run("dense", 0, 20.0, 90.0, rng))
    budget._merge(fake_run("dense", 0, 30.0, 91.0, rng))
    budget._merge(fake_run("dense", 1, 20.0, 92.0, rng))
    budget._merge(fake_run("dense", 0, 20.0, 93.0, rng))  # a rerun replaces the first
    results = json.loads(budget.OUT_JSON.read_text())
    found = sorted((r["seed"], r["minutes"], r["summary"]["trained"]["top1"]) for r in results)
    assert found == [(0, 20.0, 93.0), (0, 30.0, 91.0), (1, 20.0, 92.0)]


def test_tables_group_by_budget_with_mean_and_sample_std(budget, capsys):
    rng = random.Random(1)
    accuracies = {(c, m): [rng.uniform(85, 95) for _ in range(3)]
                  for c in ("dense", "e8g2_cosine") for m in (20.0, 30.0)}
    for (config, minutes), values in accuracies.items():
        for seed, top1 in enumerate(values):
            budget._merge(fake_run(config, seed, minutes, top1, rng))
    budget.tables(None)
    text = (budget.RESULTS / "fashion_mnist_budget.md").read_text()
    sections = text.split("### ")[1:]
    assert [s.splitlines()[0] for s in sections] == ["20 minutes per run", "30 minutes per run"]
    for section, minutes in zip(sections, (20.0, 30.0), strict=True):
        for config in ("dense", "e8g2_cosine"):
            values = accuracies[(config, minutes)]
            row = next(line for line in section.splitlines() if line.startswith(f"| {config} "))
            cells = [c.strip() for c in row.split("|")]
            assert cells[3] == "0, 1, 2"
            assert cells[4] == f"{statistics.mean(values):.2f} +/- {statistics.stdev(values):.2f}"
    assert (budget.RESULTS / "fashion_mnist_budget_accuracy.png").stat().st_size > 0
    assert (budget.RESULTS / "fashion_mnist_budget_cca_weights.png").stat().st_size > 0
