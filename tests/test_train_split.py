"""The engine with a validation split held out of the training images: every choice on it, the
test split evaluated once at the end and reported apart, the same split on resume, across seeds
and across DDP processes."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
import yaml
from torch.utils.data import Subset

from tiny_runs import TINY, make_image_tree, quiet_fit, tiny_args, tiny_config
from vitmix import cli
from vitmix.checkpoints.io import load_checkpoint
from vitmix.commands.train import result_line
from vitmix.data.split import held_out_indices
from vitmix.train import engine as engine_module

pytestmark = pytest.mark.filterwarnings("ignore:.*unreadable:UserWarning")


def _targets_of_tree(root) -> list[int]:
    """The training labels of a tree as SafeImageFolder orders them (classes, then files)."""
    classes = sorted(p.name for p in (root / "train").iterdir())
    return [k for k, name in enumerate(classes)
            for p in sorted((root / "train" / name).rglob("*.png")) if p.name != "broken.png"]


def test_choices_are_made_on_validation_and_the_test_split_is_evaluated_once(
        image_tree, tmp_path, monkeypatch):
    evaluated = []  # which split each evaluation read, in order
    original = engine_module.evaluate

    def recording(model, loader, *args, **kwargs):
        evaluated.append("val" if isinstance(loader.dataset, Subset) else "test")
        return original(model, loader, *args, **kwargs)

    monkeypatch.setattr(engine_module, "evaluate", recording)
    run = tmp_path / "run"
    result = quiet_fit(tiny_config(image_tree, run, epochs=3, val_split=6))
    # Per epoch the model and its EMA on validation; at the end the trained and the deployed
    # model on the test split, once each, after everything else.
    assert evaluated == ["val"] * 6 + ["test"] * 2
    summary = json.loads((run / "summary.json").read_text())
    val, test = summary["val"], summary["test"]
    assert val["images"] == val["trained"]["count"] == 6 and not val["is_test"]
    assert val["held_out"]["images"] == 6 and val["held_out"]["of"] == 24
    assert val["split"] == f"6 of the 24 images of {image_tree}/train, held out (split seed 0)"
    assert test["images"] == test["trained"]["count"] == test["deployed"]["count"] == 12
    assert test["split"] == f"{image_tree}/val, 12 images" and "deployed" not in val
    # The final numbers are the test split's; the best checkpoint was chosen by validation.
    assert result.final_split == summary["final_split"] == "test"
    assert (result.top1, result.deployed_top1) == (test["trained"]["top1"],
                                                  test["deployed"]["top1"])
    assert summary["trained"] == test["trained"] and summary["per_class_top1"] == test[
        "per_class_top1"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best = max(range(3), key=lambda e: float(rows[e]["ema_top1"]))  # final weights: the EMA
    assert val["best_epoch"] == summary["best_epoch"] == best
    assert not [k for k in rows[0] if "test" in k]  # per epoch: validation only
    assert result.val_top1 == float(rows[-1]["ema_top1"])
    report = (run / "report.md").read_text()
    assert f"| validation: {val['split']} | trained model (ema weights) |" in report
    assert f"| test: {test['split']} | trained model (ema weights) |" in report
    assert f"| test: {test['split']} | deployed model (vitmix.deploy) |" in report
    assert "the test split was evaluated once, after training" in report
    assert "## Per-class top-1 (%), test split" in report
    assert result_line(result).startswith(
        f"test top-1 {result.top1:.2f}% (top-5 {result.top5:.2f}%), deployed model "
        f"{result.deployed_top1:.2f}%; validation top-1 {result.val_top1:.2f}%; wall time ")


def test_a_folder_without_val_validates_on_held_out_images_and_has_no_test(tmp_path, capsys):
    root = make_image_tree(tmp_path / "data", {"train": 8})
    run = tmp_path / "run"
    assert cli.main(["train", *tiny_args(root, run, epochs=1)]) == 2
    assert capsys.readouterr().err == (
        f"vitmix train: error: {root} has no val/ folder; an ImageFolder dataset needs "
        f"{root}/train/<class>/<image> and {root}/val/<class>/<image>, or pass --val-split N "
        f"(val_split) to hold out N training images for validation\n")
    assert not run.exists()
    # More than the training set: one line, before anything is made.
    assert cli.main(["train", *tiny_args(root, run, epochs=1), "--val-split", "24"]) == 2
    assert capsys.readouterr().err == (
        f"vitmix train: error: val_split must be smaller than the 24 training images of {root} "
        f"(it holds that many out of training), got 24\n")
    assert not run.exists()
    assert cli.main(["train", *tiny_args(root, run, epochs=1), "--val-split", "6"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"] is None and summary["final_split"] == "val"
    assert summary["val"]["deployed"]["count"] == summary["val"]["images"] == 6
    assert "validation top-1" in out and "no test split" in out and "test top-1" not in out
    assert "there is no test split left" not in out
    report = (run / "report.md").read_text()
    assert "the data has no split left for a test, so these are validation numbers" in report


def test_the_split_is_the_same_for_every_seed_and_on_resume(image_tree, tmp_path):
    runs = {}
    for seed in (1, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs[seed] = engine_module._Run(tiny_config(image_tree, tmp_path / f"s{seed}",
                                                        seed=seed, val_split=6),
                                            tmp_path / f"s{seed}", engine_module.DistContext())
    assert runs[1].data.val.indices == runs[5].data.val.indices == held_out_indices(
        _targets_of_tree(image_tree), 6).tolist()
    assert runs[1].data.held_out.digest == runs[5].data.held_out.digest

    # Resumed, a run with a held-out split ends with the weights of an uninterrupted one.
    straight = quiet_fit(tiny_config(image_tree, tmp_path / "straight", val_split=6))

    class Killed(Exception):
        pass

    def kill_after_first_epoch(row):
        raise Killed

    with pytest.raises(Killed):
        quiet_fit(tiny_config(image_tree, tmp_path / "killed", val_split=6),
                  on_epoch_end=kill_after_first_epoch)
    resumed = quiet_fit(resume=tmp_path / "killed")
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "killed" / "last.pth")
    assert a["val_split_digest"] == b["val_split_digest"] == runs[1].data.held_out.digest
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed.top1 == straight.top1 and resumed.val_top1 == straight.val_top1


def test_a_run_whose_training_images_changed_is_not_resumed(tmp_path, capsys):
    root = make_image_tree(tmp_path / "data")
    run = tmp_path / "run"
    quiet_fit(tiny_config(root, run, epochs=1, val_split=6))
    digest = load_checkpoint(run / "last.pth")["val_split_digest"]
    (root / "train" / "square" / "7.png").unlink()
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 1",
                                                                               "epochs: 2"))
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vitmix train: error: cannot resume: the validation split held out "
                          f"of {root} is not the one the run started with (split {digest} "
                          f"then, ") and "its training images changed" in err


def test_a_run_of_an_earlier_version_resumes_without_a_held_out_split(image_tree, tmp_path):
    run = tmp_path / "run"
    quiet_fit(tiny_config(image_tree, run, epochs=1))
    values = yaml.safe_load((run / "config.yaml").read_text())
    del values["val_split"], values["time_budget"]
    (run / "config.yaml").write_text(yaml.safe_dump(dict(values, data="fashion-mnist")))
    # It validated on the data's own second split: it continues so.
    assert engine_module._check_resumable(run).val_split == 0


def test_processes_that_hold_out_different_images_are_caught(monkeypatch):
    """The check every DDP process makes (the 2-process run in test_train.py passes it): the
    largest of (v, -v) over the processes is (v, -v) only when every process holds v."""
    from vitmix.train import distributed

    def all_reduce_with(peer):
        def all_reduce(tensor, op):
            assert op == distributed.dist.ReduceOp.MAX
            tensor.copy_(torch.maximum(tensor, torch.tensor([peer, -peer])))
        return all_reduce

    ctx = distributed.DistContext(rank=0, world_size=2)
    for peer, same in ((12345, True), (12344, False), (12346, False)):
        monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce_with(peer))
        assert distributed.same_on_every_rank(12345, ctx) is same
    assert distributed.same_on_every_rank(1, distributed.DistContext())  # one process


def test_fashion_mnist_without_a_held_out_split_says_its_test_numbers_are_optimistic(
        tmp_path, capsys):
    from test_data import make_fashion_root

    (tmp_path / "fm").mkdir()
    make_fashion_root(tmp_path / "fm", n_train=48, n_test=12)
    common = dict(data="fashion-mnist", data_dir=str(tmp_path / "fm"), img_size=32, epochs=1,
                  model_kwargs=dict(TINY))
    # The default holds out 5000 images: more than this small copy has.
    with pytest.raises(ValueError, match=r"^val_split must be smaller than the 48 training "
                                         r"images of fashion-mnist \(it holds that many out of "
                                         r"training\), got 'auto' \(5000 for fashion-mnist\)$"):
        quiet_fit(tiny_config(tmp_path, tmp_path / "auto", **common))
    run = tmp_path / "run"
    result = quiet_fit(tiny_config(tmp_path, run, val_split=0, **common))
    summary = result.summary
    assert summary["val"]["is_test"] and summary["test"] is None
    assert summary["val"]["images"] == 12 and result.final_split == "test"
    assert result_line(result).startswith(
        f"test top-1 {result.top1:.2f}% (top-5 {result.top5:.2f}%), deployed model "
        f"{result.deployed_top1:.2f}%; no held-out validation (the epochs were validated on "
        f"the test)")
    assert ("No held-out validation split: the epochs were validated on the test images"
            in (run / "report.md").read_text())


def test_a_saved_dataset_holds_out_validation_and_shards_say_why_they_cannot(tmp_path, capsys):
    from tiny_runs import make_saved_dataset, make_shards

    saved = make_saved_dataset(tmp_path / "saved")
    run = tmp_path / "run"
    result = quiet_fit(tiny_config(saved, run, epochs=1, val_split=6))
    summary = result.summary
    # Drawn class by class from the saved training split's label column; its validation split
    # is the test split now.
    assert summary["val"]["held_out"]["images"] == summary["val"]["trained"]["count"] == 6
    assert summary["test"]["trained"]["count"] == 12 and result.final_split == "test"
    labels = json.loads((saved / "train" / "dataset_info.json").read_text())
    assert labels["features"]["label"]["names"] == ["circle", "square", "stripes"]
    shards = make_shards(tmp_path / "shards")
    assert cli.main(["train", *tiny_args(shards, tmp_path / "r2", epochs=1),
                     "--val-split", "6"]) == 2
    assert capsys.readouterr().err == (
        f"vitmix train: error: cannot hold out a validation split of {shards}: its training set "
        f"is read as a stream (webdataset shards), without the random access that picks images "
        f"out of it; give it val-*.tar shards and --val-split 0\n")
    assert not (tmp_path / "r2").exists()
