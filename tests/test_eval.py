"""`vitmix eval`: the validation split alone, each image scored against its own class by name,
a class without images reported as such, and one line for every argument it refuses."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import vitmix
from tiny_runs import TINY, make_image_tree, one_epoch_run, quiet_fit, tiny_config
from vitmix.checkpoints.io import save_weights
from vitmix.cli import main
from vitmix.data import FashionMNIST
from vitmix.train import evaluation_job
from vitmix.train.evaluation_job import evaluate_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*unreadable:UserWarning")
MODEL = "schemeformer_ppaa_t_e8_g4"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(image tree, run folder) of a one-epoch run on circle / square / stripes."""
    return one_epoch_run(tmp_path_factory.mktemp("eval"))


def test_images_are_scored_by_class_name_and_a_class_without_images_has_no_accuracy(
        trained, tmp_path, capsys):
    root, run = trained
    deployed = run / "model_deployed.safetensors"
    full = evaluate_checkpoint(MODEL, deployed, data=str(root), workers=0, out_dir=tmp_path)
    # val/ holding only the stripes: class 2 of the checkpoint, the first folder of this tree.
    only = tmp_path / "only_stripes"
    shutil.copytree(root / "val" / "stripes", only / "val" / "stripes")
    result = evaluate_checkpoint(MODEL, deployed, data=str(only), workers=0, out_dir=tmp_path)
    assert result["classes"] == ["circle", "square", "stripes"]
    assert result["per_class_top1"][:2] == [None, None]
    assert result["per_class_top1"][2] == full["per_class_top1"][2]
    assert result["top1"] == full["per_class_top1"][2] and result["count"] == 4
    saved = json.loads((tmp_path / "model_deployed_eval.json").read_text())
    assert saved["per_class_top1"][:2] == [None, None]

    # The command line says "no images" rather than 0.00%.
    assert main(["eval", "--model", MODEL, "--checkpoint", str(deployed), "--data", str(only),
                 "--workers", "0", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  circle   no images" in lines and "  square   no images" in lines


def test_a_tree_with_classes_the_checkpoint_lacks_is_refused(trained, tmp_path, capsys):
    root, run = trained
    other = tmp_path / "other"
    make_image_tree(other, {"val": 2}, classes=("circle", "square", "zigzag"))
    for checkpoint in ("model_deployed.safetensors", "last.pth"):
        assert main(["eval", "--model", MODEL, "--checkpoint", str(run / checkpoint),
                     "--data", str(other), "--workers", "0", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert (f"has classes ['zigzag'] that the checkpoint {run / checkpoint} does not have "
                f"(its classes: ['circle', 'square', 'stripes'])") in err
    assert not list(tmp_path.glob("*_eval.json"))


def test_the_run_report_says_no_images_for_a_class_without_validation_images(tmp_path):
    root = make_image_tree(tmp_path / "data")
    shutil.rmtree(root / "val" / "square")
    (root / "val" / "square").mkdir()
    result = quiet_fit(tiny_config(root, tmp_path / "run", epochs=1))
    assert result.summary["per_class_top1"][1] is None
    assert "| square | no images |" in (tmp_path / "run" / "report.md").read_text()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d)
                                                               for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_evaluation_needs_only_the_test_files(tmp_path, capsys):
    """A model of Fashion-MNIST's ten classes on a folder that holds the test files only."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fm"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (6, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 6))
    kwargs = dict(TINY, num_classes=10, in_chans=1, img_size=32)
    model = timm.create_model(MODEL, **kwargs)
    meta = {"model": MODEL, "model_kwargs": json.dumps(kwargs), "deployed": "0",
            "classes": json.dumps(list(FashionMNIST.classes))}
    save_weights(model.state_dict(), tmp_path / "fm.safetensors", meta)
    assert main(["eval", "--model", MODEL, "--checkpoint", str(tmp_path / "fm.safetensors"),
                 "--data-dir", str(folder), "--workers", "0"]) == 0
    assert "on fashion-mnist (6 images)" in capsys.readouterr().out
    # A checkpoint of other classes is not scored against Fashion-MNIST's labels.
    save_weights(model.state_dict(), tmp_path / "abc.safetensors",
                 dict(meta, classes=json.dumps([f"c{i}" for i in range(10)])))
    assert main(["eval", "--model", MODEL, "--checkpoint", str(tmp_path / "abc.safetensors"),
                 "--data-dir", str(folder)]) == 2
    assert "was trained on the classes ['c0'" in capsys.readouterr().err


def test_eval_arguments_are_checked_before_any_file_is_read(trained, tmp_path, capsys):
    root, run = trained
    deployed = str(run / "model_deployed.safetensors")
    cases = [
        (["--checkpoint", str(run)], f"checkpoint {run} is a folder, not a file: give the path "
                                     f"of a checkpoint file; it holds best.pth, last.pth, "
                                     f"model_deployed.safetensors"),
        (["--checkpoint", deployed, "--batch-size", "0"],
         "batch_size (--batch-size) must be a positive integer up to 1048576, got 0"),
        (["--checkpoint", deployed, "--in-chans", "2"],
         "in_chans (--in-chans) must be one of 1, 3, got 2"),
        (["--checkpoint", deployed, "--img-size", "-32"],
         "img_size (--img-size) must be a positive integer up to 4096, got -32"),
        (["--checkpoint", deployed, "--workers", "-1"],
         "workers (--workers) must be a non-negative integer up to 1024, got -1"),
        (["--checkpoint", deployed, "--out", deployed], "is a file; give a folder"),
        (["--checkpoint", deployed, "--data", str(root / "train")],
         "train holds none of the datasets vitmix reads: an ImageFolder tree ("),
    ]
    for args, message in cases:
        assert main(["eval", "--model", MODEL, "--data", str(root), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_eval_of_a_checkpoint_without_model_kwargs_builds_from_the_flags(trained, tmp_path):
    root, run = trained
    ckpt = torch.load(run / "last.pth", weights_only=True)
    del ckpt["model_kwargs"]
    torch.save(ckpt, tmp_path / "old.pth")
    with pytest.raises(ValueError, match="does not fit model"):  # built at 224 x 224, RGB
        evaluate_checkpoint(MODEL, tmp_path / "old.pth", data=str(root), workers=0)


# --- The evaluation transform: crop fraction and interpolation -----------------------------------
def weights_file(path: Path, deployed: bool = False, **eval_meta: str) -> Path:
    """Weights of a 3-class grey model at 32 pixels, with ``eval_meta`` in their metadata."""
    kwargs = dict(TINY, num_classes=3, in_chans=1, img_size=32)
    model = timm.create_model(MODEL, **kwargs)
    if deployed:
        vitmix.deploy(model)
    meta = {"model": MODEL, "model_kwargs": json.dumps(kwargs),
            "deployed": "1" if deployed else "0",
            "classes": json.dumps(["circle", "square", "stripes"]), **eval_meta}
    save_weights(model.state_dict(), path, meta)
    return path


def eval_resize(monkeypatch, checkpoint: Path, data: Path, *flags: str) -> tuple[int, str]:
    """The shorter-side size and resampling of the Resize `vitmix eval` cut the images with."""
    seen = []
    real = evaluation_job.load_eval_split

    def spy(data, in_chans, transform, **kwargs):
        resize = transform.transforms[0]
        seen.append((resize.size, resize.interpolation.value))
        return real(data, in_chans, transform, **kwargs)

    monkeypatch.setattr(evaluation_job, "load_eval_split", spy)
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--workers", "0",
            "--device", "cpu", "--out", str(checkpoint.parent / "eval"), *flags]
    assert main(argv) == 0
    return seen[-1]


def test_the_crop_comes_from_the_flags_the_checkpoint_the_pretrained_cfg_or_the_default(
        trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    recorded = weights_file(tmp_path / "recorded.safetensors", eval_crop_pct="0.875",
                            eval_interpolation="bilinear")
    assert eval_resize(monkeypatch, recorded, root) == (36, "bilinear")  # floor(32 / 0.875)
    assert ("  eval transform: crop 0.875 (resize to 36, centre 32), bilinear (both from the "
            "checkpoint)") in capsys.readouterr().out.splitlines()
    assert eval_resize(monkeypatch, recorded, root, "--crop-pct", "0.5") == (64, "bilinear")
    assert "crop from --crop-pct, interpolation from the checkpoint" in capsys.readouterr().out
    assert eval_resize(monkeypatch, recorded, root, "--crop-pct", "1",
                       "--interpolation", "nearest") == (32, "nearest")
    # A file that records nothing (weights converted from elsewhere): timm's pretrained_cfg.
    bare = weights_file(tmp_path / "bare.safetensors")
    cfg = timm.models.get_pretrained_cfg(MODEL)
    assert eval_resize(monkeypatch, bare, root) == (math.floor(32 / cfg.crop_pct),
                                                    cfg.interpolation)
    assert "(both from the model's pretrained_cfg)" in capsys.readouterr().out
    # The deployed weights of a run made before runs recorded it: what every run used then.
    old_run = weights_file(tmp_path / "old_run.safetensors", deployed=True)
    assert eval_resize(monkeypatch, old_run, root) == (32, "bicubic")
    for flags, message in ((["--crop-pct", "0"], "crop_pct (--crop-pct) must be a number in "
                                                 "(0, 1], got 0.0"),
                           (["--interpolation", "random"], "interpolation (--interpolation) "
                                                           "must be one of 'bicubic', ")):
        assert main(["eval", "--checkpoint", str(bare), "--data", str(root), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    damaged = weights_file(tmp_path / "damaged.safetensors", eval_crop_pct="most")
    assert main(["eval", "--checkpoint", str(damaged), "--data", str(root)]) == 2
    assert ("its eval_crop_pct metadata must be a number in (0, 1], got 'most'"
            in capsys.readouterr().err)


def test_a_runs_files_give_the_crop_the_run_validated_with(trained, tmp_path, monkeypatch):
    root, run = trained
    # The run validated at the default crop, 1; its files say so.
    assert eval_resize(monkeypatch, run / "model_deployed.safetensors", root) == (32, "bicubic")
    ckpt = torch.load(run / "last.pth", weights_only=True)
    ckpt["config"].update(eval_crop_pct=0.8, eval_interpolation="bilinear")
    torch.save(ckpt, tmp_path / "cropped.pth")
    assert eval_resize(monkeypatch, tmp_path / "cropped.pth", root) == (40, "bilinear")
    # A checkpoint of a run made before the crop was a setting: that run's crop, 1, bicubic.
    del ckpt["config"]["eval_crop_pct"], ckpt["config"]["eval_interpolation"]
    torch.save(ckpt, tmp_path / "old.pth")
    assert eval_resize(monkeypatch, tmp_path / "old.pth", root) == (32, "bicubic")
