"""Files that try to steer vitmix, data that changed under a run, weights with flipped bytes:
each refused in one line with exit code 2 before any model is built from it, and files of
earlier versions still load. Every test makes its own hostile file from a tiny run."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tiny_runs import TINY, one_epoch_run, quiet_fit
from vitmix import cli, factory
from vitmix.checkpoints.checksum import CHECKSUM_KEY, checkpoint_digest, tensors_digest
from vitmix.checkpoints.io import load_checkpoint, load_weights, save_checkpoint, save_weights
from vitmix.data.class_fingerprint import moved_classes
from vitmix.model_arguments import MODEL_ARGUMENTS, check_model_kwargs
from vitmix.train import TrainConfig
from vitmix.train.resume_checks import describe_class_change

pytestmark = pytest.mark.filterwarnings("ignore:.*unreadable:UserWarning")
MODEL = "schemeformer_ppaa_t_e8_g4"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(image tree, run folder) of a one-epoch run on circle / square / stripes."""
    return one_epoch_run(tmp_path_factory.mktemp("hostile"))


def one_line_refusal(args: list[str], capsys) -> str:
    """The error line of a command that must refuse with exit code 2 and nothing else."""
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_model_built(monkeypatch):
    """Fails the test if anything reaches timm.create_model."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was built with {kwargs}")

    monkeypatch.setattr(factory.timm, "create_model", refuse)


def with_metadata(source: Path, out: Path, **changes: str) -> Path:
    """A copy of the weights file ``source`` whose metadata has ``changes`` (the checksum
    written again, so that only the metadata is hostile)."""
    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
    meta.pop(CHECKSUM_KEY)
    save_weights(load_file(str(source)), out, dict(meta, **changes))
    return out


def eval_args(checkpoint: Path, root: Path, out: Path) -> list[str]:
    return ["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--workers", "0",
            "--out", str(out)]


# ---- 1. model arguments read from a file -------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"pretrained": True}, "the model argument 'pretrained' is refused: it would download "
                           "weights"),
    ({"checkpoint_path": "/etc/passwd"}, "'checkpoint_path' is refused: it names a file to read"),
    ({"pretrained_cfg_overlay": {"file": "/x"}}, "'pretrained_cfg_overlay' is refused"),
    ({"patch_size": 8}, "'patch_size' is not a model argument vitmix takes (it takes "
                        "num_classes, in_chans"),
    ({"num_classes": "3"}, "the model argument num_classes must be an integer from 0 to 100000, "
                           "got '3'"),
    ({"num_classes": 10**12}, "num_classes must be an integer from 0 to 100000, got "
                              "1000000000000"),
    ({"dims": [[16] * 3] * 4}, "the model argument dims must be a list of 1 to 8 values"),
    ({"depths": [10**6] * 4}, "the model argument depths must be a list of 1 to 8 values (one "
                              "per stage), each an integer from 1 to 256"),
    ({"cca": "false"}, "the model argument cca must be True or False, got 'false'"),
])
def test_model_arguments_in_a_weights_file_pass_the_allowlist(trained, tmp_path, capsys,
                                                              no_model_built, kwargs, message):
    root, run = trained
    hostile = with_metadata(run / "model_deployed.safetensors", tmp_path / "h.safetensors",
                            model_kwargs=json.dumps(kwargs))
    line = one_line_refusal(eval_args(hostile, root, tmp_path), capsys)
    assert line.startswith(f"vitmix eval: error: checkpoint {hostile}: ")
    assert message in line
    # export reads the same file the same way
    line = one_line_refusal(["export", str(tmp_path / "m.pt"), "--format", "torchscript",
                             "--model", MODEL, "--checkpoint", str(hostile)], capsys)
    assert message in line and not (tmp_path / "m.pt").exists()


def test_a_value_nested_thousands_deep_is_one_line(trained, tmp_path, capsys, no_model_built):
    root, run = trained
    hostile = with_metadata(run / "model_deployed.safetensors", tmp_path / "deep.safetensors",
                            model_kwargs='{"dims": ' + "[" * 100_000 + "]" * 100_000 + "}")
    line = one_line_refusal(eval_args(hostile, root, tmp_path), capsys)
    assert line.endswith(f"checkpoint {hostile}: its model_kwargs metadata nests more than 32 "
                         f"levels deep; settings nest a few")

    deep_yaml = tmp_path / "deep.yaml"
    deep_yaml.write_text("model_kwargs: " + "[" * 100_000 + "]" * 100_000 + "\n")
    line = one_line_refusal(["train", "--config", str(deep_yaml)], capsys)
    assert line == (f"vitmix train: error: config file {deep_yaml} nests more than 32 levels "
                    f"deep; settings nest a few")
    # A .pth whose model_kwargs nest as deep: torch.save cannot write one, so the pickle is
    # made by hand (EMPTY_LIST and APPEND, which unpickle without recursing).
    deep_pth = tmp_path / "deep.pth"
    torch.save({"model": {}, "model_name": MODEL}, deep_pth)
    n = 100_000
    text = lambda s: b"X" + len(s).to_bytes(4, "little") + s.encode()  # noqa: E731
    pickle = (b"\x80\x02}" + text("model") + b"}s" + text("model_name") + text(MODEL) + b"s"
              + text("model_kwargs") + b"}" + text("dims") + b"]" * n + b"a" * (n - 1) + b"ss.")
    with zipfile.ZipFile(deep_pth) as z:
        members = {name: z.read(name) for name in z.namelist()}
    with zipfile.ZipFile(deep_pth, "w") as z:
        for name, data in members.items():
            z.writestr(name, pickle if name.endswith("/data.pkl") else data)
    line = one_line_refusal(eval_args(deep_pth, root, tmp_path), capsys)
    assert line == (f"vitmix eval: error: checkpoint {deep_pth}: the model argument dims must be "
                    f"a list of 1 to 8 values (one per stage), each an integer from 1 to 8192, "
                    f"got <a list nested too deep to show>")

    with pytest.raises(SystemExit) as exited:  # argparse's refusal, after its usage line
        cli.main(["train", "--model-kwargs", "[" * 100_000])
    assert exited.value.code == 2
    assert ("argument --model-kwargs: the JSON nests more than 32 levels deep"
            in capsys.readouterr().err)


def test_a_training_checkpoint_and_a_hub_name_are_checked_alike(trained, tmp_path, capsys,
                                                                no_model_built):
    root, run = trained
    ckpt = load_checkpoint(run / "last.pth")
    hostile = tmp_path / "hostile.pth"
    save_checkpoint(dict(ckpt, model_kwargs=dict(ckpt["model_kwargs"], pretrained=True)),
                    hostile)
    line = one_line_refusal(eval_args(hostile, root, tmp_path), capsys)
    assert f"checkpoint {hostile}: the model argument 'pretrained' is refused" in line

    # A file that names a Hugging Face Hub model instead of a registered one.
    hub = with_metadata(run / "model_deployed.safetensors", tmp_path / "hub.safetensors",
                        model="hf-hub:someone/weights")
    line = one_line_refusal(eval_args(hub, root, tmp_path), capsys)
    assert line == ("vitmix eval: error: unknown model 'hf-hub:someone/weights': a place to fetch "
                    "a model from, not a model registered with timm; vitmix builds registered "
                    "models by name and loads weights from --checkpoint")


def test_a_config_file_and_a_run_folder_cannot_steer_the_model(trained, tmp_path, capsys,
                                                               no_model_built):
    root, run = trained
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": str(root), "model_kwargs": {
        "checkpoint_path": str(run / "last.pth")}}))
    line = one_line_refusal(["train", "--config", str(config), "--out", str(tmp_path / "r")],
                            capsys)
    assert line.startswith(f"vitmix train: error: config file {config}: the model argument "
                           f"'checkpoint_path' is refused: it names a file to read")
    assert not (tmp_path / "r").exists()

    # A run folder whose config.yaml was edited: refused when resumed, naming the file.
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    values = yaml.safe_load((copy / "config.yaml").read_text())
    values["model_kwargs"]["pretrained"] = True
    (copy / "config.yaml").write_text(yaml.safe_dump(values))
    line = one_line_refusal(["train", "--resume", str(copy)], capsys)
    assert line.startswith(f"vitmix train: error: config file {copy / 'config.yaml'}: the model "
                           f"argument 'pretrained' is refused")

    # On the command line the same arguments are refused: the run's config.yaml would hold them.
    line = one_line_refusal(["train", "--data", str(root), "--out", str(tmp_path / "r"),
                             "--model-kwargs", '{"pretrained": true}'], capsys)
    assert "model_kwargs (--model-kwargs): the model argument 'pretrained' is refused" in line
    line = one_line_refusal(["train", "--data", str(root), "--out", str(tmp_path / "r"),
                             "--model-kwargs", '{"no_such_arg": 1}'], capsys)
    assert line.startswith("vitmix train: error: model_kwargs (--model-kwargs): 'no_such_arg' is "
                           "not a model argument vitmix takes (it takes num_classes, in_chans, ")


def test_every_allowed_argument_is_one_a_vitmix_model_takes():
    import inspect

    from vitmix.models.vitmix_groupmixformer import GroupMixFormer
    from vitmix.models.vitmix_metaformer import MetaFormer

    taken = set(inspect.signature(MetaFormer).parameters) | set(
        inspect.signature(GroupMixFormer).parameters)
    assert set(MODEL_ARGUMENTS) <= taken
    assert not {"device", "dtype", "kwargs"} & set(MODEL_ARGUMENTS)
    # One bound per thing, from vitmix.limits: the in_chans `vitmix export --in-chans` takes.
    assert MODEL_ARGUMENTS["in_chans"].allowed == "an integer from 1 to 1024"
    # What vitmix itself writes passes: a run's arguments, an imported release's.
    assert check_model_kwargs(dict(TINY, num_classes=3, in_chans=1, img_size=[32, 64],
                                   drop_path_rate=0.1, token_mixers=["pool", "pool", "attn",
                                                                     "attn"],
                                   mlp_ratios=[8.0] * 4, mlp_groups=4, cca=True,
                                   channel_shuffle=False, pos_embed_stage=None,
                                   cca_schedule="cosine"), "x")


# ---- 3. what a resumed run checks ----------------------------------------------------------------

def resumable_copy(trained: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """(data, run): copies of the trained run and its image tree, the run's config.yaml pointed
    at the copied data and asking for a second epoch, so that --resume has work to do."""
    root, run = trained
    data, copy = tmp_path / "data", tmp_path / "run"
    shutil.copytree(root, data)
    shutil.copytree(run, copy)
    values = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump(dict(values, data=str(data), epochs=2)))
    return data, copy


def test_resume_refuses_data_whose_classes_changed(trained, tmp_path, capsys):
    data, copy = resumable_copy(trained, tmp_path)
    for split in ("train", "val"):
        (data / split / "square").rename(data / split / "box")
    before = (copy / "last.pth").read_bytes()
    line = one_line_refusal(["train", "--resume", str(copy)], capsys)
    assert line == (f"vitmix train: error: cannot resume: the classes of {data} are not those "
                    f"{copy / 'last.pth'} was trained on ('square' no longer there; 'box' new); "
                    f"its labels would now mean other classes. Put the data back as it was, or "
                    f"start a new run with --out")
    assert (copy / "last.pth").read_bytes() == before  # nothing trained
    assert describe_class_change(["a", "b", "c"], ["a", "c", "b"]) == (
        "the same names in another order (label 1 was 'b', now 'c'; label 2 was 'c', now 'b')")


def test_resume_refuses_class_folders_that_swapped_their_names(trained, tmp_path, capsys):
    data, copy = resumable_copy(trained, tmp_path)
    for split in ("train", "val"):  # the class list stays ['circle', 'square', 'stripes']
        (data / split / "circle").rename(data / split / "was_circle")
        (data / split / "square").rename(data / split / "circle")
        (data / split / "was_circle").rename(data / split / "square")
    line = one_line_refusal(["train", "--resume", str(copy)], capsys)
    assert line == (f"vitmix train: error: cannot resume: the class folders of {data} hold "
                    f"other images than when {copy / 'last.pth'} was trained (those of 'circle' "
                    f"are now in 'square'; those of 'square' are now in 'circle'): folders "
                    f"renamed into each other, so its labels would now mean other classes. Put "
                    f"the data back as it was, or start a new run with --out")
    # Images added to or removed from a class are no such finding.
    then = {"a": ["1", "2"], "b": ["3", "4"]}
    assert moved_classes(then, {"a": ["0", "1"], "b": ["4", "5"]}) == []
    assert moved_classes(then, {"a": ["3", "4"], "b": ["1", "2"]}) == [("a", "b"), ("b", "a")]


def test_model_arguments_that_disagree_with_the_data_are_refused_before_the_first_step(
        trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "r"
    line = one_line_refusal(["train", "--data", str(root), "--out", str(out), "--img-size", "32",
                             "--in-chans", "1", "--workers", "0", "--batch-size", "8",
                             "--model-kwargs", json.dumps(dict(TINY, num_classes=2))], capsys)
    assert line == (f"vitmix train: error: model_kwargs sets num_classes=2, but the training "
                    f"data {root} has 3 classes; drop num_classes from model_kwargs "
                    f"(--model-kwargs): a run takes it from its data")
    assert not out.exists()
    with pytest.raises(ValueError, match=r"model_kwargs sets in_chans=3, but the run's in_chans "
                                         r"is 1 \(--in-chans\)"):
        TrainConfig(model_kwargs={"in_chans": 3}, in_chans=1)
    TrainConfig(model_kwargs={"img_size": [32, 32]}, img_size=32)  # [32, 32] is 32


# ---- 4. checksums of the tensors -----------------------------------------------------------------

def flip_a_byte_of(path: Path, tensor: torch.Tensor) -> None:
    """Flip one byte inside ``tensor``'s data where the file ``path`` holds it."""
    data = bytearray(path.read_bytes())
    needle = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0
    data[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_weights_are_refused_by_every_command(trained, tmp_path, capsys):
    root, run = trained
    deployed = tmp_path / "model_deployed.safetensors"
    shutil.copy(run / "model_deployed.safetensors", deployed)
    flip_a_byte_of(deployed, load_file(str(deployed))["head.weight"])
    for args in (eval_args(deployed, root, tmp_path),
                 ["export", str(tmp_path / "m.pt"), "--format", "torchscript", "--model", MODEL,
                  "--checkpoint", str(deployed)]):
        line = one_line_refusal(args, capsys)
        assert line.split(": error: ")[1].startswith(
            f"checkpoint {deployed} is damaged: its tensors do not match the checksum it was "
            f"written with (tensors_sha256 ")

    # A training checkpoint: resume, eval and import-weights refuse it alike.
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    flip_a_byte_of(copy / "last.pth", load_checkpoint(run / "last.pth")["model"]["head.weight"])
    for args in (["train", "--resume", str(copy)], eval_args(copy / "last.pth", root, tmp_path),
                 ["import-weights", str(copy / "last.pth"), str(tmp_path / "w.safetensors")]):
        line = one_line_refusal(args, capsys)
        assert f"checkpoint {copy / 'last.pth'} is damaged: its tensors do not match" in line


def test_files_without_a_checksum_load_with_a_note(trained, tmp_path, capsys):
    root, run = trained
    old = tmp_path / "old.safetensors"
    with safe_open(str(run / "model_deployed.safetensors"), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != CHECKSUM_KEY}
    save_file(load_file(str(run / "model_deployed.safetensors")), str(old), metadata=meta)
    assert cli.main(eval_args(old, root, tmp_path)) == 0
    err = capsys.readouterr().err
    assert err == (f"note: checkpoint {old} holds no checksum of its tensors (written by an "
                   f"earlier vitmix or by another tool); its weights load unverified\n")

    # A run of an earlier vitmix resumes, saying so once.
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = torch.load(copy / "last.pth", weights_only=True)
    del ckpt[CHECKSUM_KEY]
    torch.save(ckpt, copy / "last.pth")
    values = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump(dict(values, epochs=2)))
    notes = []
    load_checkpoint(copy / "last.pth", notes)
    assert notes == [f"checkpoint {copy / 'last.pth'} holds no checksum of its tensors (written "
                     f"by an earlier vitmix or by another tool); its weights load unverified"]
    quiet_fit(resume=copy)
    out = capsys.readouterr().out
    assert out.count("holds no checksum") == 1
    # and the files it wrote carry one again
    assert CHECKSUM_KEY in torch.load(copy / "last.pth", weights_only=True)


def test_the_checksum_covers_names_dtypes_shapes_and_bytes(tmp_path):
    a = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(0),
         "h": torch.ones(2, dtype=torch.bfloat16), "s": torch.tensor(3)}
    digest = tensors_digest(a)
    assert digest == tensors_digest(dict(reversed(a.items())))  # the order of the names
    for changed in ({**a, "w": a["w"].view(3, 2)}, {**a, "w": a["w"].to(torch.int32)},
                    {**a, "w2": a["w"]},
                    {k if k != "w" else "v": v for k, v in a.items()},
                    {**a, "w": a["w"] + 1}):
        assert tensors_digest(changed) != digest
    assert tensors_digest({"w": a["w"].t()}) == tensors_digest({"w": a["w"].t().contiguous()})
    save_weights(a, tmp_path / "a.safetensors", {})
    state, meta = load_weights(tmp_path / "a.safetensors")
    assert CHECKSUM_KEY not in meta and torch.equal(state["h"], a["h"])
    nested = {"model_name": "m", "model": a, "optimizer": {"state": {0: {"m": torch.ones(2)}}}}
    assert checkpoint_digest(nested) != checkpoint_digest(
        {**nested, "optimizer": {"state": {0: {"m": torch.zeros(2)}}}})
    deep: dict = {}
    for _ in range(40):
        deep = {"x": deep}
    with pytest.raises(ValueError, match="nests deeper than 32 levels"):
        checkpoint_digest({"model": {}, "model_name": "m", "extra": deep})
