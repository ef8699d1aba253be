"""`vitmix export`: deployed models to ONNX and TorchScript, checked against PyTorch."""

import json

import onnx
import pytest
import timm
import torch

from vitmix import deploy
from vitmix.checkpoints.io import load_model, save_weights
from vitmix.cli import main
from vitmix.export import export_model

MODEL = "schemeformer_ppaa_t_e8_g4"
KWARGS = {"img_size": 32, "in_chans": 1, "num_classes": 7}


def trained_looking_model() -> torch.nn.Module:
    """A tiny model whose blocks matter: LayerScale starts at 1e-5, which would hide errors."""
    torch.manual_seed(0)
    model = timm.create_model(MODEL, **KWARGS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("mix_logits"):
                p.normal_()
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple:
    """A vitmix-style weights file (what a training run writes) and the model it holds."""
    model = trained_looking_model()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_weights(model.state_dict(), path, {
        "model": MODEL, "model_kwargs": json.dumps(KWARGS), "deployed": "0"})
    return path, model


def reference_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trained model's eval-mode output in float64: what the export must reproduce."""
    with torch.no_grad():
        return model.eval().double()(x.double()).float()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_cli_export_from_checkpoint_matches_pytorch(checkpoint, tmp_path, capsys, fmt, suffix):
    path, trained = checkpoint
    out = tmp_path / f"model{suffix}"
    assert main(["export", "--model", MODEL, "--checkpoint", str(path), "--format", fmt,
                 str(out)]) == 0
    assert "max |exported - PyTorch|" in capsys.readouterr().out

    # The file holds the deployed model of the checkpoint: same function as its eval mode,
    # any batch size, one grey channel and 7 classes from the checkpoint's settings.
    x = torch.randn(3, 1, 32, 32)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        names = {init.name for init in onnx.load(str(out)).graph.initializer}
        assert not any("mix_logits" in n for n in names)  # CCA and its logits are gone
    else:
        got = torch.jit.load(str(out))(x)
    assert got.shape == (3, 7)
    torch.testing.assert_close(got, reference_logits(trained, x), rtol=1e-4, atol=1e-4)


def test_export_reports_its_difference_and_rejects_a_wrong_model(tmp_path):
    model = trained_looking_model()
    deploy(model)
    report = export_model(model, tmp_path / "m.onnx", "onnx", img_size=32, in_chans=1)
    assert report.max_abs_diff <= 1e-4 and report.input_shape == (2, 1, 32, 32)

    class BatchDependent(torch.nn.Module):
        """Python control flow on the batch size: tracing freezes the branch it saw (batch 1),
        so the exported file computes something else for the check batch of 2."""

        def forward(self, x):
            pooled = x.mean(dim=(2, 3))
            return pooled if x.shape[0] == 1 else 2 * pooled

    with pytest.raises(ValueError, match="differs from PyTorch.*nothing was written"):
        export_model(BatchDependent(), tmp_path / "b.pt", "torchscript", img_size=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no file, no temporary

    # An existing file: refused unless asked, and when asked, replaced only by a file that
    # passed its check.
    old = tmp_path / "m.onnx"
    before = old.read_bytes()
    with pytest.raises(ValueError, match="m.onnx exists; pass overwrite=True to replace it"):
        export_model(model, old, "onnx", img_size=32, in_chans=1)
    with pytest.raises(ValueError, match="differs from PyTorch"):
        export_model(BatchDependent(), old, "onnx", img_size=8, overwrite=True)
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_cli_export_replaces_a_file_only_with_force(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    out = tmp_path / "model.pt"
    out.write_bytes(b"someone's file")
    args = ["export", "--model", MODEL, "--checkpoint", str(path), "--format", "torchscript",
            str(out)]
    assert main(args) == 2
    assert f"{out} exists; pass --force to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"someone's file"
    assert main([*args, "--force"]) == 0
    assert torch.jit.load(str(out))(torch.randn(1, 1, 32, 32)).shape == (1, 7)


def test_export_errors_are_clear(tmp_path, capsys, checkpoint):
    model, _ = load_model(MODEL, img_size=32, deploy=True)
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(model, tmp_path / "m.x", "tflite", img_size=32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_model(model, tmp_path / "missing" / "m.onnx", "onnx", img_size=32)
    with pytest.raises(ValueError, match="is a folder"):
        export_model(model, tmp_path, "onnx", img_size=32)
    with pytest.raises(ValueError, match="tolerance must be a non-negative number, got nan"):
        export_model(model, tmp_path / "m.onnx", "onnx", img_size=32, tolerance=float("nan"))
    with pytest.raises(ValueError, match="img_size must be a positive integer, got 2.5"):
        export_model(model, tmp_path / "m.onnx", "onnx", img_size=2.5)

    # Through the CLI: one clean line and exit code 2, nothing written.
    path, _ = checkpoint
    cases = [
        (["--model", "metaformer_ppaa_t", "--checkpoint", str(path)], "holds a"),
        (["--model", MODEL, "--checkpoint", str(tmp_path / "none.safetensors")],
         "does not exist"),
        (["--model", "no_such_model"], "unknown model"),
        (["--model", MODEL, "--img-size", "0"],
         "--img-size must be a positive integer up to 4096, got 0"),
        (["--model", MODEL, "--tolerance", "-1"], "--tolerance must be a non-negative number"),
    ]
    for extra, message in cases:
        out = tmp_path / "model.onnx"
        assert main(["export", "--format", "onnx", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    assert main(["export", "--format", "onnx", str(tmp_path / "m.onnx"), "--model", MODEL,
                 "--checkpoint", str(damaged)]) == 2
    assert "damaged" in capsys.readouterr().err
