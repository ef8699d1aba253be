"""`vitmix compress`: a dense run in, a SCHEME run out (the folder vitmix train makes), with the
dense model as teacher; its files load in vitmix eval and export, and wrong input is one line."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tiny_runs import TINY, make_image_tree, quiet_fit, tiny_config
from vitmix.checkpoints.io import load_model, read_model
from vitmix.cli import main
from vitmix.layers import SchemeMlp
from vitmix.train.config import TrainConfig

FAST = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--threads", "1",
        "--no-progress-bar"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    """(image tree, run folder) of a one-epoch run of the dense tiny MetaFormer."""
    base = tmp_path_factory.mktemp("dense")
    root = make_image_tree(base / "data")
    quiet_fit(tiny_config(root, base / "run", model="metaformer_ppaa_t", epochs=1))
    return root, base / "run"


def compress_run(dense, out, *flags):
    return main(["compress", str(dense), "--out", str(out), *FAST, *flags])


def test_compress_makes_a_scheme_run_that_distils_from_the_dense_model(dense_run, tmp_path,
                                                                        capsys):
    root, dense = dense_run
    out = tmp_path / "g2"
    assert compress_run(dense, out, "--groups", "2") == 0
    printed = capsys.readouterr().out
    assert "deployed model" in printed and "report:" in printed
    config = TrainConfig.load(out / "config.yaml")
    # The dense run's data and model; the fine-tune's schedule; the dense model as teacher.
    assert config.model == "metaformer_ppaa_t" and config.model_kwargs == TINY
    assert config.data == str(root) and config.img_size == 32 and config.in_chans == 1
    assert config.schemify == {"groups": 2, "expansion": None, "cca": False,
                               "cca_schedule": "learned"}
    assert config.init_from == config.teacher == str((dense / "last.pth").resolve())
    assert config.base_lr == 2e-3 and config.seed == 3
    summary = json.loads((out / "summary.json").read_text())
    layers = summary["compression"]["layers"]
    assert len(layers) == 4 and all(0 < layer["kept"] <= 1 for layer in layers)
    assert summary["schemify"]["groups"] == 2 and summary["teacher"] == config.teacher
    assert summary["macs"] < json.loads((dense / "summary.json").read_text())["macs"]
    assert "Compression" in (out / "report.md").read_text()
    # The run's files rebuild the SCHEME model: vitmix eval and load_model read the form.
    for name in ("last.pth", "model_deployed.safetensors"):
        saved = read_model(out / name, "metaformer_ppaa_t")
        assert saved.schemify["groups"] == 2
        model = saved.build()
        assert sum(isinstance(m, SchemeMlp) for m in model.modules()) == 4
    model, _ = load_model("metaformer_ppaa_t", out / "model_deployed.safetensors", img_size=32,
                          in_chans=1, deploy=True)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    assert main(["eval", "--checkpoint", str(out / "model_deployed.safetensors"), "--data",
                 str(root), "--img-size", "32", "--in-chans", "1", "--workers", "0"]) == 0
    # A stopped compress run continues as any run does.
    assert main(["train", "--resume", str(out)]) == 0


def test_compress_variants_wider_with_cca_and_without_teacher(dense_run, tmp_path):
    _, dense = dense_run
    out = tmp_path / "e8g4"
    assert compress_run(dense, out, "--groups", "4", "--expansion", "8", "--cca",
                        "--cca-schedule", "cosine", "--no-distill", "--grouping",
                        "diagonal") == 0
    config = TrainConfig.load(out / "config.yaml")
    assert config.teacher is None and config.grouping == "diagonal"
    summary = json.loads((out / "summary.json").read_text())
    assert {layer["copies"] for layer in summary["compression"]["layers"]} == {2}
    assert summary["max_cca_weight_dropped"] == 0.0  # the cosine schedule ends at 0


def refused(capsys, *argv):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_compress_refusals_are_one_line(dense_run, tmp_path, capsys):
    root, dense = dense_run
    out = str(tmp_path / "out")
    assert "the dense model /nonexistent does not exist" in refused(
        capsys, "compress", "/nonexistent", "--out", out)
    assert "holds no last.pth: not a vitmix run folder" in refused(
        capsys, "compress", str(root), "--out", out)
    assert "groups must be an integer from 1 to 1024, got 0" in refused(
        capsys, "compress", str(dense), "--groups", "0", "--out", out)
    assert "groups=3 does not divide the input width 16" in refused(
        capsys, "compress", str(dense), "--groups", "3", "--out", out, *FAST)
    assert "hidden width must be 1 to 2 times the dense 64" in refused(
        capsys, "compress", str(dense), "--groups", "2", "--expansion", "16", "--out", out,
        *FAST)
    assert "--no-distill fine-tunes without a teacher" in refused(
        capsys, "compress", str(dense), "--no-distill", "--distill-weight", "0.3", "--out", out)
    assert "distill_weight must be a number in [0, 1], got 2.0" in refused(
        capsys, "compress", str(dense), "--distill-weight", "2", "--out", out)
    assert not (tmp_path / "out").exists()
    # A SCHEME run is no dense model to start from.
    scheme = tmp_path / "scheme"
    assert compress_run(dense, scheme, "--max-train-batches", "1", "--max-val-batches",
                        "1") == 0
    assert "holds a SCHEME model already" in refused(
        capsys, "compress", str(scheme), "--out", out)
    # A Hub folder holds what timm builds by name: a SCHEME form of a dense name is not that.
    assert "cannot build; load it with vitmix" in refused(
        capsys, "hub-export", str(scheme), str(tmp_path / "hub"))


def test_init_from_checks_the_dense_checkpoint_against_the_run(dense_run, tmp_path):
    root, dense = dense_run
    other = make_image_tree(tmp_path / "four", classes=("a", "b", "c", "d"))
    config = tiny_config(other, tmp_path / "run", model="metaformer_ppaa_t", epochs=1,
                         schemify={"groups": 2}, init_from=str(dense / "last.pth"))
    with pytest.raises(ValueError, match="was trained on other classes than the run's data"):
        quiet_fit(config)
    with pytest.raises(ValueError, match="it needs schemify"):
        tiny_config(root, tmp_path / "run", init_from=str(dense / "last.pth"))


def test_a_hostile_schemify_in_metadata_is_refused_before_building(dense_run, tmp_path):
    _, dense = dense_run
    scheme = tmp_path / "scheme"
    assert compress_run(dense, scheme, "--max-train-batches", "1", "--max-val-batches",
                        "1") == 0
    path = scheme / "model_deployed.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.pop("tensors_sha256")
    meta["schemify"] = json.dumps({"groups": 2, "expansion": 10**6})
    save_file(load_file(str(path)), str(path), meta)
    with pytest.raises(ValueError, match="expansion must be None or a number in \\(0, 64\\]"):
        read_model(path, "metaformer_ppaa_t")
