"""`vitmix train` and `vitmix eval` end to end on webdataset shards and a saved Hugging Face
dataset that the tests make (no network), in one process and under 2-process DDP, with one
damaged training image and one damaged validation image in each, counted once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings

import pytest

from tiny_runs import TINY, child_env, make_saved_dataset, make_shards
from vitmix import cli
from vitmix.checkpoints.io import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:skipping unreadable:UserWarning")

SOURCES = {
    "shards": lambda root: make_shards(root, damaged={"train": 3, "val": 5}),
    "saved": lambda root: make_saved_dataset(root, damaged={"train": 3, "validation": 5}),
}


def _args(data, out, workers: int = 1) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--model", "metaformer_ppaa_t",
            "--model-kwargs", json.dumps(TINY), "--img-size", "32", "--epochs", "1",
            "--batch-size", "4", "--workers", str(workers), "--threads", "1",
            "--warmup-epochs", "0.5", "--no-progress-bar"]


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_train_and_eval_in_one_process(source, tmp_path, capsys):
    data = SOURCES[source](tmp_path / source)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damaged images warn where they are met
        assert cli.main(["train", *_args(data, run)]) == 0
    out = capsys.readouterr().out
    assert "24 train / 12 validation images" in out and "report: " in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["circle", "square", "stripes"]
    assert load_checkpoint(run / "last.pth")["num_updates"] == 6  # 24 images, batches of 4
    # The damaged validation image is left out of the shards' evaluation and replaced by its
    # neighbour in the saved dataset's, as in an image folder.
    assert summary["trained"]["count"] == (11 if source == "shards" else 12)
    # Both damaged images, met while loading: in the log, metrics.csv, summary.json, report.md.
    assert summary["skipped_images"] == summary["skipped_at_load"] == 2
    assert "2 images could not be read while loading" in out
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert int(rows[-1]["skipped_images"]) == 2
    assert ("images skipped as unreadable: 2 (2 of them found damaged while loading)"
            in (run / "report.md").read_text())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["eval", "--checkpoint", str(run / "model_deployed.safetensors"),
                         "--data", str(data), "--workers", "1", "--out",
                         str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "1 unreadable images skipped" in printed
    evaluated = json.loads((tmp_path / "eval" / "model_deployed_eval.json").read_text())
    assert evaluated["count"] == summary["deployed"]["count"]
    assert evaluated["top1"] == pytest.approx(summary["deployed"]["top1"])
    assert evaluated["classes"] == summary["classes"] and evaluated["skipped_images"] == 1


def _ddp_run(data, out) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitmix", "train", *_args(data, out), "--device", "cpu"]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300)


def _check_ddp_run(proc: subprocess.CompletedProcess, out, val_count: int) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report: ") == 1  # only rank 0 speaks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 8
    assert summary["trained"]["count"] == val_count  # every val image once over both ranks
    # 24 training images, 2 ranks x 4: 3 steps; the damaged images, met on whichever rank and
    # worker read them, summed over the ranks.
    assert load_checkpoint(out / "last.pth")["num_updates"] == 3
    assert summary["skipped_images"] == summary["skipped_at_load"] == 2


def test_two_process_ddp_run_on_shards(tmp_path):
    data = SOURCES["shards"](tmp_path / "shards")
    proc = _ddp_run(data, tmp_path / "ddp")
    _check_ddp_run(proc, tmp_path / "ddp", val_count=11)


@pytest.mark.slow  # a saved dataset is sampled as an image folder is: the fast DDP test covers it
def test_two_process_ddp_run_on_a_saved_dataset(tmp_path):
    data = SOURCES["saved"](tmp_path / "saved")
    proc = _ddp_run(data, tmp_path / "ddp")
    _check_ddp_run(proc, tmp_path / "ddp", val_count=12)


def test_a_shard_shorter_than_its_info_stops_the_run_in_one_line(tmp_path, capsys):
    """Found in a DataLoader worker, said as the worker said it, without its traceback."""
    data = make_shards(tmp_path / "shards", shard_size=100)
    info = {"splits": {split: {"filenames": [f"{split}-0000.tar"], "shard_lengths": [n]}
                       for split, n in (("train", 30), ("val", 12))}}
    (data / "_info.json").write_text(json.dumps(info))
    run = tmp_path / "run"
    assert cli.main(["train", *_args(data, run, workers=1)]) == 2
    err = capsys.readouterr().err
    assert err == (f"vitmix train: error: webdataset shard {data / 'train-0000.tar'} holds 24 "
                   f"samples, but {data / '_info.json'} gave 30\n")
    assert not run.exists()  # stopped before its first checkpoint: nothing left
