"""The prepared GPU check's smoke mode: scripts/gpu_check.sh --smoke runs every part on the CPU
(tiny models, a few batches), so the script a GPU session runs in one call cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_data import make_fashion_root

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_part_in_its_cpu_smoke_mode(tmp_path):
    data = tmp_path / "fashion"
    data.mkdir()
    make_fashion_root(data, n_train=40, n_test=8)
    out = tmp_path / "check"
    env = dict(os.environ, PYTHON=sys.executable, VITMIX_FASHION_MNIST_DIR=str(data),
               VITMIX_GPU_CHECK_DEADLINE="900", OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--smoke", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    ran = {"env", "pytest_cuda", "train_bf16", "kill_and_resume", "torchrun", "gpu_tables_eager",
           "input_decode"}
    assert ran <= set(parts) and all(parts[n]["status"] == "ok" for n in ran), parts
    assert all(p["status"] in ("ok", "skipped") for p in parts.values())
    # On the CPU the stopped and resumed run ends with the uninterrupted run's weights.
    resumed = parts["kill_and_resume"]["detail"]
    assert resumed["stopped_exit"] == 75 and resumed["identical"] is True
    assert parts["torchrun"]["detail"]["ddp_backend"] == "gloo"
    tables = json.loads((out / "gpu_tables_eager.json").read_text())
    kinds = [(r["kind"], r["mode"]) for r in tables["results"]]
    assert ("train", "eager") in kinds and ("inference", "torch.compile (eager)") in kinds
    assert "| kill_and_resume | ok |" in (out / "summary.md").read_text()
