"""vitmix.checkpoints.io: the atomic write every kept file goes through, training checkpoints
and weights files, and the clear errors for missing, damaged and mismatched ones."""

import copy
import csv
import json
import os
import stat

import pytest
import torch
from torch import nn

from vitmix import checkpoints
from vitmix.layers import SchemeMlp
from vitmix.train.report import MetricsLog


def write_text(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    return write


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "new" / "folder" / "file.txt"
    checkpoints.atomic_write(path, write_text("one"))
    checkpoints.atomic_write(path, write_text("two"))
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.txt"]


def test_atomic_write_gives_the_permissions_of_any_other_file(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    checkpoints.atomic_write(tmp_path / "atomic.txt", write_text("x"))
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "last.pth"
    path.write_text("previous")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise error

    with pytest.raises(type(error)):
        checkpoints.atomic_write(path, half_then_fail)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_the_data_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    kind = lambda fd: stat.S_IFMT(os.fstat(fd).st_mode)  # a file or a folder
    monkeypatch.setattr(checkpoints.io.os, "fsync",
                        lambda fd: calls.append(("fsync", kind(fd))) or real_fsync(fd))
    monkeypatch.setattr(checkpoints.io.os, "replace", lambda a, b: calls.append(("replace",))
                        or real_replace(a, b))
    checkpoints.atomic_write(tmp_path / "f.txt", write_text("x"))
    assert calls == [("fsync", stat.S_IFREG), ("replace",), ("fsync", stat.S_IFDIR)]


def test_metrics_log_keeps_its_rows_when_a_write_fails(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path / "metrics.csv")
    log.append({"epoch": 0, "val_top1": 50.0})
    log.write()
    before = (tmp_path / "metrics.csv").read_text()
    log.append({"epoch": 1, "val_top1": 60.0})

    def fail(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        log.write()
    assert (tmp_path / "metrics.csv").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def training_state(**extra):
    model = nn.Linear(3, 2)
    return {"model_name": "tiny", "model_kwargs": {"num_classes": 2}, "model": model.state_dict(),
            **extra}


def test_checkpoint_round_trip_and_errors(tmp_path):
    path = tmp_path / "last.pth"
    state = training_state(epoch=3)
    checkpoints.save_checkpoint(state, path)
    loaded = checkpoints.load_checkpoint(path)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["weight"],
                                                state["model"]["weight"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="cut.pth is damaged"):
        checkpoints.load_checkpoint(tmp_path / "cut.pth")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="not a vitmix training checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "bare.pth")


def test_weights_from_safetensors_and_from_a_training_checkpoint(tmp_path):
    model = nn.Linear(3, 2)
    checkpoints.save_weights(model.state_dict(), tmp_path / "w.safetensors",
                             {"model": "tiny", "x": "1"})
    state, meta = checkpoints.load_weights(tmp_path / "w.safetensors")
    assert meta == {"model": "tiny", "x": "1"}
    assert torch.equal(state["weight"], model.weight.detach())

    ema = {k: v + 1 for k, v in model.state_dict().items()}
    checkpoints.save_checkpoint(training_state(ema=ema, final_weights="ema"), tmp_path / "ema.pth")
    state, meta = checkpoints.load_weights(tmp_path / "ema.pth")
    assert torch.equal(state["weight"], ema["weight"])  # what the run reports
    assert meta == {"model": "tiny", "model_kwargs": '{"num_classes": 2}', "deployed": "0"}

    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="bad.safetensors is damaged or not safetensors"):
        checkpoints.load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.load_weights(tmp_path / "none.safetensors")


def test_check_state_dict_names_each_difference():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    good = model.state_dict()
    checkpoints.check_state_dict(model, good, "m", "f.pth")  # fits: no error
    with pytest.raises(ValueError, match="holds a 'other' model, not 'm'; pass --model other"):
        checkpoints.check_state_dict(model, good, "m", "f.pth", saved_name="other")
    bad = {k: v for k, v in good.items() if k != "1.bias"}
    bad["2.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"f.pth does not fit model 'm': 1 missing keys \(e.g. "
                       r"1.bias\); 1 unexpected keys \(e.g. 2.weight\); 1 shape mismatches"):
        checkpoints.check_state_dict(model, bad, "m", "f.pth")


# ---- models from checkpoints ---------------------------------------------------------------

MODEL = "schemeformer_ppaa_t_e8_g4"
KWARGS = {"img_size": 32, "in_chans": 1, "num_classes": 7}


def trained_looking(model):
    """Weights off their initial values (LayerScale starts at 1e-5 and would hide errors)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run's weights in training form and in deployed form, and the model they hold."""
    import timm

    import vitmix

    folder = tmp_path_factory.mktemp("run")
    model = trained_looking(timm.create_model(MODEL, **KWARGS)).eval()
    meta = {"model": MODEL, "model_kwargs": json.dumps(KWARGS)}
    checkpoints.save_weights(model.state_dict(), folder / "trained.safetensors",
                             dict(meta, deployed="0"))
    deployed = copy.deepcopy(model)
    vitmix.deploy(deployed)
    checkpoints.save_weights(deployed.state_dict(), folder / "deployed.safetensors",
                             dict(meta, deployed="1"))
    return folder, model


@pytest.mark.parametrize("file", ["trained.safetensors", "deployed.safetensors"])
@pytest.mark.parametrize("deploy", [False, True])
def test_load_model_rebuilds_the_saved_model(saved_run, file, deploy):
    folder, model = saved_run
    loaded, kwargs = checkpoints.load_model(MODEL, folder / file, deploy=deploy)
    assert kwargs == KWARGS
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=1e-4, atol=1e-4)
    cca_left = any(isinstance(m, SchemeMlp) and m.has_cca for m in loaded.modules())
    assert cca_left == (file == "trained.safetensors" and not deploy)
    if deploy:
        assert not loaded.training


def test_load_model_settings_given_win_over_saved_ones(saved_run):
    folder, _ = saved_run
    _, kwargs = checkpoints.load_model(MODEL, folder / "trained.safetensors", in_chans=1)
    assert kwargs == KWARGS
    # Built at the size given, so the position embedding saved for 32 pixels no longer fits.
    with pytest.raises(ValueError, match=r"pos_embed \(1, 128, 2, 2\) vs \(1, 128, 4, 4\)"):
        checkpoints.load_model(MODEL, folder / "trained.safetensors", img_size=64)
    with pytest.raises(ValueError, match=r"downsample.weight \(32, 1, 7, 7\) vs \(32, 3, 7, 7\)"):
        checkpoints.load_model(MODEL, folder / "trained.safetensors", in_chans=3)
    fresh, kwargs = checkpoints.load_model(MODEL, deploy=True)
    assert kwargs == {"img_size": 224, "in_chans": 3}
    assert fresh.num_classes == 1000


def test_read_model_and_its_errors(saved_run, tmp_path):
    folder, model = saved_run
    saved = checkpoints.read_model(folder / "deployed.safetensors", MODEL)
    assert (saved.name, saved.kwargs, saved.deployed) == (MODEL, KWARGS, True)
    with pytest.raises(ValueError, match=f"holds a '{MODEL}' model, not 'metaformer_ppaa_t'; "
                       f"pass --model {MODEL}"):
        checkpoints.read_model(folder / "trained.safetensors", "metaformer_ppaa_t")
    # A file without settings: the name asked for, built with the settings given.
    bare = tmp_path / "bare.safetensors"
    checkpoints.save_weights(model.state_dict(), bare, {})
    saved = checkpoints.read_model(bare, MODEL)
    assert (saved.kwargs, saved.deployed) == ({}, False)
    saved.build(KWARGS)
    with pytest.raises(ValueError, match="does not fit model .*shape mismatches"):
        saved.build(dict(KWARGS, num_classes=3))
    with pytest.raises(ValueError, match="does not fit model"):
        checkpoints.read_model(bare, "metaformer_ppaa_t").build(KWARGS)


def test_load_model_checks_the_name_before_the_file(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no_such_model': not registered"):
        checkpoints.load_model("no_such_model", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        checkpoints.load_model(MODEL, tmp_path / "missing.safetensors")
