"""Hub-ready folders (`vitmix hub-export`, vitmix.save_for_hub): written from a tiny trained run
of each family and from `vitmix import-weights` output, loaded back through timm's
``local-dir:`` source with outputs equal to the source model's, and every refusal in one line
with nothing written."""

import importlib
import json
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml

import vitmix
import vitmix.factory
from test_checkpoints_official import official_state_dict
from test_checkpoints_scheme_vit import SHUFFLE_S12, release_checkpoint
from tiny_runs import CLASSES, quiet_fit, tiny_config
from vitmix.checkpoints import read_model
from vitmix.cli import main as cli_main
from vitmix.data.transforms import default_norm
from vitmix.hub import load_hub_folder
from vitmix.hub.card import CITATIONS

ROOT = Path(__file__).resolve().parents[1]
GMF_TINY = dict(dims=[20, 40, 40, 40], depths=[1, 1, 1, 1])
# timm 1.0.22's local-dir: loader reads the folder's weights with torch.load, so it cannot read
# model.safetensors; the tested set's reads it. There, load_hub_folder is the equivalent.
LOCAL_DIR_READS_SAFETENSORS = tuple(int(p) for p in timm.__version__.split(".")[:3]) > (1, 0, 22)


def load_folder(folder: Path) -> torch.nn.Module:
    if LOCAL_DIR_READS_SAFETENSORS:
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    return load_hub_folder(folder)


@pytest.fixture(scope="module")
def runs(image_tree, tmp_path_factory) -> dict[str, Path]:
    """One-epoch runs of a SCHEMEformer and a GroupMixFormer, with their own eval transform."""
    base = tmp_path_factory.mktemp("runs")
    quiet_fit(tiny_config(image_tree, base / "scheme", epochs=1, eval_crop_pct=0.875,
                          eval_interpolation="bilinear"))
    quiet_fit(tiny_config(image_tree, base / "gmf", epochs=1, model="groupmixformer_m",
                          model_kwargs=GMF_TINY))
    return {"scheme": base / "scheme", "gmf": base / "gmf"}


def same_outputs(model: torch.nn.Module, expected: torch.nn.Module, shape) -> None:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected.eval()(x))


def check_card(folder: Path, papers: list[str]) -> str:
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "timm" and "image-classification" in front["tags"]
    for key, entry in CITATIONS.items():
        assert (entry in card) == (key in papers)
    return card


@pytest.mark.parametrize("family", ["scheme", "gmf"])
def test_a_run_exports_and_loads_through_local_dir(runs, tmp_path, capsys, family):
    run, out = runs[family], tmp_path / "hub"
    assert cli_main(["hub-export", str(run), str(out)]) == 0
    assert f"load it: import vitmix, timm; timm.create_model('local-dir:{out}'" \
        in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json",
                                                     "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]  # no temporary left

    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    saved = read_model(run / "last.pth", summary["model"])  # the run's final weights
    assert config["architecture"] == summary["model"] and config["num_classes"] == 3
    assert config["label_names"] == list(CLASSES)
    assert config["model_args"]["in_chans"] == 1 and config["model_args"]["num_classes"] == 3
    cfg = config["pretrained_cfg"]
    crop, interpolation = (0.875, "bilinear") if family == "scheme" else (1.0, "bicubic")
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"]) == ([1, 32, 32], crop,
                                                                         interpolation)
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == default_norm(1)

    model = load_folder(out)
    assert model.pretrained_cfg["label_names"] == list(CLASSES)
    same_outputs(model, saved.build(), (1, 32, 32))

    card = check_card(out, ["scheme"] if family == "scheme" else ["groupmixformer"])
    top1 = summary["val"]["trained"]["top1"]
    assert re.search(rf"\| validation: .* \| trained \| 12 \| {top1:.2f}% \|", card)
    assert f"eval_crop_pct: {crop}" in card and "EMA weights after 1 epoch," in card
    assert ("vitmix.deploy(model)" in card) == (family == "scheme")


def test_best_pth_and_force_replace_an_earlier_export(runs, tmp_path, capsys):
    out = tmp_path / "hub"
    assert cli_main(["hub-export", str(runs["scheme"]), str(out), "--pytorch-bin"]) == 0
    # Every timm vitmix supports reads a folder with pytorch_model.bin through local-dir:.
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    saved = read_model(runs["scheme"] / "last.pth", "schemeformer_ppaa_t_e8_g4")
    same_outputs(model, saved.build(), (1, 32, 32))

    assert cli_main(["hub-export", str(runs["scheme"] / "best.pth"), str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "pytorch_model.bin").is_file()  # the earlier export, untouched
    assert cli_main(["hub-export", str(runs["scheme"] / "best.pth"), str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json",
                                                     "model.safetensors"]
    assert "the epoch best.pth was chosen by (epoch 1)" in (out / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]


def test_import_weights_output_exports_for_both_families(tmp_path, capsys):
    # SCHEME: a timm train checkpoint of the release, its model named in args.
    release, converted = tmp_path / "scheme.pth", tmp_path / "scheme.safetensors"
    release_checkpoint(release)
    assert cli_main(["import-weights", str(release), str(converted)]) == 0
    out = tmp_path / "scheme_hub"
    assert vitmix.save_for_hub(converted, out).model == "metaformer_ppaa_s12"
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"]["channel_shuffle"] is True
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    same_outputs(load_folder(out), read_model(converted, "metaformer_ppaa_s12").build(),
                 (3, 32, 32))
    card = check_card(out, ["scheme"])
    assert "in the format of the SCHEME authors' release (scheme_vit)" in card
    assert f"named its model `{SHUFFLE_S12}`" in card
    assert "release's eval function" in card and "`state_dict` entry" in card

    # GroupMixFormer: the release's {"model": ...} file.
    release, converted = tmp_path / "gmf.pth", tmp_path / "gmf.safetensors"
    torch.save({"model": official_state_dict("m", seed=1)}, release)
    assert cli_main(["import-weights", str(release), str(converted)]) == 0
    out = tmp_path / "gmf_hub"
    assert cli_main(["hub-export", str(converted), str(out)]) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert (config["architecture"], config["num_classes"]) == ("groupmixformer_m", 1000)
    same_outputs(load_folder(out), read_model(converted, "groupmixformer_m").build(),
                 (3, 64, 64))
    check_card(out, ["groupmixformer"])


def test_refusals_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    run = runs["scheme"]
    out = tmp_path / "hub"

    def refused(*argv: str) -> str:
        assert cli_main(["hub-export", *argv]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        return err

    assert "source nowhere does not exist" in refused("nowhere", str(out))
    assert "unknown model 'no_such_model'" in refused(str(run), str(out), "--model",
                                                      "no_such_model")
    assert "holds a 'schemeformer_ppaa_t_e8_g4' model, not 'metaformer_ppaa_t'; leave --model " \
           "out" in refused(str(run / "last.pth"), str(out), "--model", "metaformer_ppaa_t")
    assert "holds deployed weights (vitmix.deploy's form" in refused(
        str(run / "model_deployed.safetensors"), str(out))
    assert f"{tmp_path} is a folder without last.pth, so not a vitmix run folder" in refused(
        str(tmp_path), str(out))
    bare = tmp_path / "bare.safetensors"
    vitmix.checkpoints.save_weights(read_model(run / "last.pth", "schemeformer_ppaa_t_e8_g4")
                                    .state, bare, metadata={})
    assert "does not name its model; pass --model NAME" in refused(str(bare), str(out))
    assert not out.exists()

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert f"output folder {a_file} is a file; give a folder" in refused(str(run), str(a_file))
    # --force never replaces a folder holding files an export does not write.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert "holds files an export does not write (notes.txt)" in refused(str(run), str(mine),
                                                                        "--force")
    assert (mine / "notes.txt").read_text() == "mine" and a_file.read_text() == "mine"


def test_a_failed_export_leaves_the_earlier_folder_and_no_temporary(runs, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "hub"
    vitmix.save_for_hub(runs["gmf"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # A model argument lost on the way to config.json: the rebuilt model has other sizes.
    write_module = importlib.import_module("vitmix.hub.write")
    real_save = write_module.save_for_hf

    def losing_dims(model, folder, **kwargs):
        real_save(model, folder, **kwargs)
        config_file = Path(folder) / "config.json"
        config = json.loads(config_file.read_text())
        del config["model_args"]["dims"]
        config_file.write_text(json.dumps(config))

    monkeypatch.setattr(write_module, "save_for_hf", losing_dims)
    with pytest.raises(ValueError, match=r"does not rebuild the model exactly \(.*size "
                                         r"mismatch.*\); nothing was written"):
        vitmix.save_for_hub(runs["scheme"], out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]


def test_the_card_cites_the_papers_as_the_readme_does():
    readme = (ROOT / "README.md").read_text()
    for entry in CITATIONS.values():
        assert entry in readme


def test_a_timm_model_vitmix_did_not_change_keeps_timm_arguments_and_cites_nothing(tmp_path):
    # `vitmix train` trains any timm model; a convolutional one takes no img_size.
    weights, out = tmp_path / "resnet.safetensors", tmp_path / "hub"
    kwargs = {"num_classes": 3, "in_chans": 1, "img_size": 32}
    model = vitmix.factory.build_model("test_resnet", kwargs)
    vitmix.checkpoints.save_weights(model.state_dict(), weights, metadata={
        "model": "test_resnet", "model_kwargs": json.dumps(kwargs), "deployed": "0"})
    vitmix.save_for_hub(weights, out)
    config = json.loads((out / "config.json").read_text())
    assert "img_size" not in config["model_args"]
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]
    same_outputs(load_folder(out), model, (1, 32, 32))
    card = check_card(out, [])
    assert "## Citation" not in card and "vitmix registers" not in card
