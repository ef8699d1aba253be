"""vitmix.checkpoints.io: the atomic write every kept file goes through, training checkpoints
and weights files, and the clear errors for missing, damaged and mismatched ones."""

import copy
import csv
import errno
import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from vitmix import checkpoints
from vitmix.cli import main
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


# ---- nothing in a file runs ------------------------------------------------------------------

class WritesAFileWhenUnpickled:
    """A pickle payload: unpickling it calls open(marker, "w"), which creates the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def payload_checkpoint(path, marker) -> None:
    """What a vitmix checkpoint looks like, with a payload beside the weights."""
    state = training_state(model_kwargs={"num_classes": 2}, extra=WritesAFileWhenUnpickled(marker))
    torch.save(state, path)


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    payload_checkpoint(tmp_path / "evil.pth", marker)
    for load in (checkpoints.load_checkpoint, checkpoints.load_weights,
                 checkpoints.load_torch_file):
        with pytest.raises(ValueError, match=r"evil.pth holds a Python object \(\S*open\) besides "
                           r"tensors and plain values; vitmix does not load such files"):
            load(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("command", ["eval", "export", "import-weights", "convert"])
def test_no_command_runs_a_pickled_object(tmp_path, capsys, command):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    payload_checkpoint(evil, marker)
    args = {"eval": ["eval", "--model", MODEL, "--checkpoint", str(evil)],
            "export": ["export", str(tmp_path / "m.onnx"), "--format", "onnx", "--model", MODEL,
                       "--checkpoint", str(evil)],
            "import-weights": ["import-weights", str(evil), str(tmp_path / "w.safetensors")],
            "convert": ["convert", str(evil), str(tmp_path / "w.safetensors")]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert "holds a Python object" in err[-1] and "Traceback" not in "".join(err)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]


@pytest.mark.parametrize("command", ["import-weights", "convert"])
def test_a_random_file_is_one_line_without_advice_to_load_it_unsafely(tmp_path, capsys, command):
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4)
    assert main([command, str(tmp_path / "random.pth"), str(tmp_path / "w.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"vitmix {command}: error: checkpoint ")
    assert "random.pth is damaged or not a PyTorch checkpoint" in err
    assert "weights_only" not in err and "\n" not in err


def test_checkpoints_of_vitmix_0_1_with_a_numpy_random_state_still_load(tmp_path):
    # vitmix 0.1 saved np.random.get_state() as it is: an array, which weights_only=True
    # admits only through the allow-list.
    np_state = np.random.get_state()
    torch.save(training_state(rng={"numpy": np_state}), tmp_path / "old.pth")
    loaded = checkpoints.load_checkpoint(tmp_path / "old.pth")
    assert np.array_equal(loaded["rng"]["numpy"][1], np_state[1])


def test_a_folder_given_as_checkpoint_is_named_as_one(tmp_path):
    checkpoints.save_weights({"w": torch.zeros(1)}, tmp_path / "run" / "model_deployed.safetensors",
                             {})
    for load in (checkpoints.load_checkpoint, checkpoints.load_weights):
        with pytest.raises(ValueError, match=r"run is a folder, not a file: give the path of a "
                           r"checkpoint file; it holds model_deployed.safetensors"):
            load(tmp_path / "run")


def test_a_checkpoint_without_model_kwargs_loads_with_none(tmp_path):
    state = training_state()
    del state["model_kwargs"]
    checkpoints.save_checkpoint(state, tmp_path / "bare.pth")
    _, meta = checkpoints.load_weights(tmp_path / "bare.pth")
    assert meta["model_kwargs"] == "{}"
    state["model_kwargs"] = ["not", "a", "mapping"]
    checkpoints.save_checkpoint(state, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth is damaged: its model_kwargs are list"):
        checkpoints.load_weights(tmp_path / "odd.pth")


def test_damaged_metadata_is_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    checkpoints.save_weights({"w": torch.zeros(1)}, path, {"model": MODEL,
                                                           "model_kwargs": "{not json"})
    with pytest.raises(ValueError, match="its model_kwargs metadata is not a JSON object"):
        checkpoints.read_model(path, MODEL)
    checkpoints.save_weights({"w": torch.zeros(1)}, path, {"model": MODEL, "classes": "[1, 2]"})
    with pytest.raises(ValueError, match="its class names are not all strings"):
        checkpoints.read_model(path, MODEL)


def test_a_full_disk_is_an_os_error_naming_the_file_and_keeps_the_old_one(tmp_path,
                                                                           monkeypatch):
    path = tmp_path / "last.pth"
    checkpoints.save_checkpoint(training_state(epoch=1), path)
    before = path.read_bytes()

    def disk_fills_up(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a full disk raises

    monkeypatch.setattr(checkpoints.io.torch, "save", disk_fills_up)
    with pytest.raises(OSError) as caught:
        checkpoints.save_checkpoint(training_state(epoch=2), path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_save_weights_writes_what_safetensors_reads(tmp_path):
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    checkpoints.save_weights(state, tmp_path / "w.safetensors", {"k": "v"})
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        # The checksum of the tensors beside the caller's metadata (see test_checksums.py).
        assert set(f.metadata()) == {"k", "tensors_sha256"} and f.metadata()["k"] == "v"
        assert torch.equal(f.get_tensor("a"), state["a"]) and f.get_tensor("b").dtype == torch.int64
