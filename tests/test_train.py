"""The training engine end to end on generated images: run folder, SCHEME hooks, resume, DDP,
evaluation against a float64 reference, and every error a person can meet."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tiny_runs import TINY, child_env, make_image_tree, quiet_fit, tiny_args, tiny_config
from vitmix import cli
from vitmix.checkpoints.io import load_checkpoint
from vitmix.data import load_splits
from vitmix.data.split import hold_out_validation
from vitmix.layers.scheme import cosine_cca_weight
from vitmix.train import TrainConfig, TrainingDiverged, evaluate, fit
from vitmix.train import engine as engine_module
from vitmix.train.evaluation_job import evaluate_checkpoint

# The fixture's broken PNG warns by design.
pytestmark = pytest.mark.filterwarnings("ignore:.*unreadable:UserWarning")

def test_tiny_run_writes_the_run_folder_and_drives_the_cosine_schedule(image_tree, tmp_path):
    config = tiny_config(image_tree, tmp_path / "run", epochs=3,
                         model_kwargs=dict(TINY, cca_schedule="cosine"))
    result = quiet_fit(config)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "last.pth", "best.pth", "report.md", "loss.png",
                 "accuracy.png", "cca_weights.png", "confusion.png", "summary.json",
                 "model_deployed.safetensors"):
        assert (run / name).is_file(), name
    assert TrainConfig.load(run / "config.yaml") == config
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 1 and summary["trained"]["count"] == 12
    # The deployed model computes what the trained model computes in eval mode.
    assert result.deployed_top1 == pytest.approx(result.top1)
    assert summary["max_cca_weight_dropped"] == 0.0  # the cosine schedule ends at exactly 0

    rows = list(__import__("csv").DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    cca_cols = [k for k in rows[0] if k.startswith("cca/")]
    assert len(cca_cols) == 4  # one SchemeMlp per block, four blocks
    # Logged weights follow the cosine from each layer's frozen start, sampled at epoch ends.
    ckpt = load_checkpoint(run / "last.pth")
    for col in cca_cols:
        logits = ckpt["model"][f"{col[4:]}.mix_logits"].double()
        start = float(torch.softmax(logits, 0)[1])
        for epoch, row in enumerate(rows):
            expected = cosine_cca_weight(start, (epoch + 1) / 3)
            assert float(row[col]) == pytest.approx(expected, abs=1e-6)
    report = (run / "report.md").read_text()
    assert "deployed model" in report and "cca_weights.png" in report

    # `vitmix eval` on the deployed weights gives the run's own number.
    evaluated = evaluate_checkpoint("schemeformer_ppaa_t_e8_g4",
                                    run / "model_deployed.safetensors", data=str(image_tree),
                                    workers=0, out_dir=tmp_path / "eval")
    assert evaluated["top1"] == pytest.approx(result.top1)
    assert (tmp_path / "eval" / "model_deployed_confusion.png").is_file()


def test_optimizer_groups_and_learning_rate_scaling(image_tree, tmp_path):
    config = tiny_config(image_tree, tmp_path / "r", accum_steps=2, base_lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = engine_module._Run(config, tmp_path / "r", engine_module.DistContext())
    assert run.lr == pytest.approx(1e-3 * 16 / 1024)
    assert run.updates_per_epoch == 2  # 3 batches of 8, accumulated in twos
    names = {id(p): n for n, p in run.model.named_parameters()}
    for group in run.optimizer.param_groups:
        for p in group["params"]:
            no_decay = p.ndim <= 1 or names[id(p)].endswith("pos_embed")
            assert group["weight_decay"] == (0.0 if no_decay else config.weight_decay), names[id(p)]


def test_the_engine_uses_the_scaled_rates(image_tree, tmp_path):
    config = tiny_config(image_tree, tmp_path / "r", accum_steps=2, base_lr=1e-3,
                         lr_base_size=512, scale_warmup_and_min_lr=True, warmup_lr=2e-4,
                         min_lr=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = engine_module._Run(config, tmp_path / "r", engine_module.DistContext())
    # 8 images x 2 accumulation steps on 1 process = 16 images: 16 / 512 of each rate.
    assert run.lr == pytest.approx(1e-3 * 16 / 512)
    assert run.scheduler.warmup_lr_init == pytest.approx(2e-4 * 16 / 512)
    assert run.scheduler.lr_min == pytest.approx(1e-4 * 16 / 512)

def test_the_eval_crop_and_interpolations_reach_the_runs_transforms(image_tree, tmp_path):
    config = tiny_config(image_tree, tmp_path / "r", eval_crop_pct=0.875,
                         eval_interpolation="bilinear", train_interpolation="random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = engine_module._Run(config, tmp_path / "r", engine_module.DistContext())
    resize, crop = run.data.val.transform.transforms[:2]
    assert (resize.size, resize.interpolation.value, crop.size) == (36, "bilinear", (32, 32))
    train_crop = run.data.train.transform.transforms[0]
    assert [m.value for m in train_crop.interpolation] == ["bilinear", "bicubic"]  # "random"
    # The default keeps every pixel, as before.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = engine_module._Run(tiny_config(image_tree, tmp_path / "d"), tmp_path / "d",
                                 engine_module.DistContext())
    resize = run.data.val.transform.transforms[0]
    assert (resize.size, resize.interpolation.value) == (32, "bicubic")


def test_ema_warmup_keeps_the_initial_batchnorm_statistics_out_of_a_short_run(
        image_tree, tmp_path):
    """The conv stem's BatchNorm: without the warm-up the EMA still holds the statistics of the
    first step after six updates at decay 0.999; with it, the EMA follows the model."""
    key = "stages.0.downsample.1.running_var"
    gaps, first_step = {}, None
    for warmup in (True, False):
        out = tmp_path / f"warmup_{warmup}"
        config = tiny_config(image_tree, out, model_kwargs=dict(TINY, stem="conv"),
                             ema_decay=0.999, ema_warmup=warmup)
        if warmup:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run = engine_module._Run(config, out, engine_module.DistContext())
            # timm's warm-up: the first update copies, then 1 - (1 + step)^(-2/3), capped.
            decays = [run.ema.get_decay(t) for t in (1, 2, 9, 10**6)]
            assert decays == pytest.approx([0.0, 1 - 2 ** (-2 / 3), 1 - 9 ** (-2 / 3), 0.999])
        quiet_fit(config)
        ckpt = load_checkpoint(out / "last.pth")
        assert ckpt["num_updates"] == 6
        gaps[warmup] = (ckpt["ema"][key] - ckpt["model"][key]).abs().max().item()
        if not warmup:
            first_step = ckpt["ema"][key]
    assert gaps[True] < 0.5 * gaps[False]  # measured: 0.11 against 0.37
    # Without the warm-up the EMA is 0.999^5 of the model after its first step: still at the
    # initial running variance (1) moved one BatchNorm step (momentum 0.1) towards the batch.
    assert (first_step > 0.85).all()  # about 0.9: the small initial convs give a small variance


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(image_tree, tmp_path):
    straight = quiet_fit(tiny_config(image_tree, tmp_path / "straight", accum_steps=2))

    class Killed(Exception):
        pass

    def kill_after_first_epoch(row):
        if row["epoch"] == 0:
            raise Killed

    with pytest.raises(Killed):
        quiet_fit(tiny_config(image_tree, tmp_path / "killed", accum_steps=2),
                  on_epoch_end=kill_after_first_epoch)
    assert load_checkpoint(tmp_path / "killed" / "last.pth")["epoch"] == 1
    resumed = quiet_fit(resume=tmp_path / "killed")
    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "killed" / "last.pth")
    assert a["num_updates"] == b["num_updates"] == 4
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert resumed.top1 == straight.top1
    lines = (tmp_path / "killed" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3  # header + two epochs, the first not repeated


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
        image_tree, tmp_path, monkeypatch, capsys):
    class NaNInSecondEpoch(nn.Module):
        calls = 0

        def forward(self, logits, target):
            NaNInSecondEpoch.calls += 1
            labels = target if target.dim() == 1 else target.argmax(-1)  # Mixup: soft targets
            loss = nn.functional.cross_entropy(logits, labels)
            return loss * float("nan") if NaNInSecondEpoch.calls > 3 else loss

    monkeypatch.setattr(engine_module, "build_criterion", lambda config: NaNInSecondEpoch())
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as caught:
        quiet_fit(tiny_config(image_tree, run))
    # Clipping is on (5.0): the advice is the learning rate alone.
    assert str(caught.value) == (
        f"the loss became nan at epoch 2, update 3; training stopped, the last good checkpoint "
        f"is {run / 'last.pth'} (epoch 1). Start again with a lower learning rate (--base-lr, "
        f"now 0.04)")
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values()
                                      if v.is_floating_point())
    # In the first epoch, with clipping off: no checkpoint to name, and clipping advised. The
    # command line says it in one line and exits 3; the run leaves no folder behind.
    NaNInSecondEpoch.calls = 3
    run = tmp_path / "nan2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli.main(["train", *tiny_args(image_tree, run), "--clip-grad", "0"])
    assert code == 3
    assert capsys.readouterr().err == (
        "vitmix train: stopped: the loss became nan at epoch 1, update 0; training stopped, no "
        "checkpoint was written before it. Start again with a lower learning rate (--base-lr, "
        "now 0.04) and gradient clipping on (--clip-grad 5)\n")
    assert not run.exists()


def test_checkpoint_errors(image_tree, tmp_path, capsys):
    run = tmp_path / "run"
    quiet_fit(tiny_config(image_tree, run, epochs=1, ema=False))
    deployed = run / "model_deployed.safetensors"
    with pytest.raises(ValueError, match="holds a 'schemeformer_ppaa_t_e8_g4' model"):
        evaluate_checkpoint("metaformer_ppaa_t", deployed, data=str(image_tree), workers=0)
    # Weights of another architecture without a model name: caught by keys and shapes.
    foreign = tmp_path / "foreign.safetensors"
    state = load_file(str(deployed))
    save_file({k: v for k, v in state.items() if "stages.3" not in k}, str(foreign),
              metadata={"model_kwargs": json.dumps(dict(TINY, num_classes=3, in_chans=1,
                                                        img_size=32)), "deployed": "1"})
    with pytest.raises(ValueError, match="does not fit.*missing keys"):
        evaluate_checkpoint("schemeformer_ppaa_t_e8_g4", foreign, data=str(image_tree), workers=0)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes((run / "last.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match="damaged"):
        evaluate_checkpoint("schemeformer_ppaa_t_e8_g4", damaged, data=str(image_tree))
    (run / "last.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged"):
        quiet_fit(resume=run)
    with pytest.raises(FileNotFoundError, match="the run folder .*never_ran does not exist"):
        fit(resume=tmp_path / "never_ran")
    (tmp_path / "no_checkpoint").mkdir()
    with pytest.raises(FileNotFoundError, match="no_checkpoint/last.pth does not exist"):
        fit(resume=tmp_path / "no_checkpoint")
    # The command line turns them into one line and exit code 2.
    code = cli.main(["eval", "--model", "metaformer_ppaa_t", "--checkpoint", str(deployed),
                     "--data", str(image_tree)])
    assert code == 2 and "pass --model schemeformer_ppaa_t_e8_g4" in capsys.readouterr().err


def test_resume_errors_name_the_run_folder_and_never_suggest_flags(image_tree, tmp_path, capsys):
    run = tmp_path / "run"
    quiet_fit(tiny_config(image_tree, run, epochs=1))
    ckpt = load_checkpoint(run / "last.pth")
    config = yaml.safe_load((run / "config.yaml").read_text())

    # config.yaml of another model than last.pth holds: --model would be refused with --resume.
    (run / "config.yaml").write_text(yaml.safe_dump(dict(config, model="metaformer_ppaa_t",
                                                         epochs=2)))
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (f"vitmix train: error: cannot resume: {run / 'last.pth'} holds a "
                   f"'schemeformer_ppaa_t_e8_g4' model, but {run / 'config.yaml'} trains "
                   f"'metaformer_ppaa_t'; the folder mixes two runs (start a new run with --out "
                   f"instead)\n")
    assert "--model" not in err
    (run / "config.yaml").write_text(yaml.safe_dump(dict(config, epochs=2)))

    # Weights without the training state.
    torch.save({k: ckpt[k] for k in ("model", "model_name", "model_kwargs")}, run / "last.pth")
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert ("it lacks optimizer, scheduler, rng, epoch, num_updates, best_metric, best_epoch, so "
            "it is not the training checkpoint of a vitmix run") in capsys.readouterr().err

    # A pickled object in last.pth: refused, not run.
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "payload_ran"), "w"))

    torch.save(dict(ckpt, extra=Payload()), run / "last.pth")
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert "holds a Python object" in capsys.readouterr().err
    assert not (tmp_path / "payload_ran").exists()
    assert cli.main(["train", "--resume", str(run / "last.pth")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert ("--resume continues a run with its saved config.yaml; drop ['epochs']"
            in capsys.readouterr().err)


def test_images_found_damaged_while_loading_are_counted_in_the_log_and_report(
        tmp_path, capsys):
    root = make_image_tree(tmp_path / "data")
    damaged = root / "train" / "square" / "3.png"
    damaged.write_bytes(damaged.read_bytes()[:-40])  # the header reads, the pixels do not
    run = tmp_path / "run"
    result = quiet_fit(tiny_config(root, run, epochs=1, verify_images="header", workers=1))
    assert result.summary["skipped_images"] == 1 and result.summary["skipped_at_load"] == 1
    assert ("1 images passed the header check but could not be read while loading"
            in capsys.readouterr().out)
    assert ("images skipped as unreadable: 1 (1 of them found damaged while loading)"
            in (run / "report.md").read_text())


def test_config_errors(image_tree, tmp_path):
    # The rules of each field: tests/test_train_config.py.
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        quiet_fit(tiny_config(image_tree, tmp_path / "x", model="no_such_model"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        quiet_fit(tiny_config(image_tree, tmp_path / "y", batch_size=64))
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "last.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="already holds a run"):
        fit(tiny_config(image_tree, tmp_path / "z"))


def test_cli_overrides_a_yaml_config(tmp_path):
    from vitmix.commands.train import config_from_args

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "batch_size": 16, "mixup": 0.0}))
    args = cli.build_parser().parse_args(["train", "--config", str(path), "--batch-size", "12",
                                          "--clip-grad", "0", "--auto-augment", "none"])
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.mixup) == (7, 12, 0.0)
    assert config.clip_grad is None and config.auto_augment is None


def test_evaluate_matches_a_float64_reference():
    torch.manual_seed(0)
    num_classes, n = 7, 53
    features = torch.randn(n, 5)
    targets = torch.randint(0, num_classes, (n,))
    model = nn.Linear(5, num_classes)
    loader = DataLoader(TensorDataset(features, targets), batch_size=8)
    result = evaluate(model, loader, num_classes)

    logits = model.double()(features.double()).detach()
    order = logits.argsort(dim=1, descending=True)
    top1 = sum(int(order[i, 0] == targets[i]) for i in range(n)) / n * 100
    top5 = sum(int(targets[i] in order[i, :5].tolist()) for i in range(n)) / n * 100
    loss = sum(-math.log(torch.softmax(logits[i], 0)[targets[i]]) for i in range(n)) / n
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(n):
        confusion[targets[i], order[i, 0]] += 1
    assert result.count == n
    assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert torch.equal(result.confusion, confusion)
    per_class = [100 * confusion[c, c].item() / max(1, confusion[c].sum().item())
                 for c in range(num_classes)]
    assert result.per_class == pytest.approx(per_class)


def test_flip_test_time_augmentation_matches_a_float64_reference():
    torch.manual_seed(1)
    num_classes, n = 6, 41
    images = torch.randn(n, 1, 4, 6)
    targets = torch.randint(0, num_classes, (n,))
    model = nn.Sequential(nn.Flatten(), nn.Linear(24, num_classes))  # not mirror-symmetric
    loader = DataLoader(TensorDataset(images, targets), batch_size=8)
    result = evaluate(model, loader, num_classes, tta="flip")

    twin = model.double()
    with torch.no_grad():
        probs = (torch.softmax(twin(images.double()), 1)
                 + torch.softmax(twin(images.double().flip(-1)), 1)) / 2
    top1 = sum(int(probs[i].argmax() == targets[i]) for i in range(n)) / n * 100
    loss = sum(-math.log(probs[i, targets[i]]) for i in range(n)) / n
    assert result.top1 == pytest.approx(top1)
    assert result.loss == pytest.approx(loss, rel=1e-5)
    plain = evaluate(model.float(), loader, num_classes)
    assert plain.loss != pytest.approx(result.loss)  # the mirror image did change something
    with pytest.raises(ValueError, match="unknown test-time augmentation 'crops'"):
        evaluate(model, loader, num_classes, tta="crops")


def test_two_process_ddp_run_on_cpu(image_tree, tmp_path):
    out = tmp_path / "ddp"
    env = child_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vitmix", "train", "--data", str(image_tree),
           "--out", str(out), "--model-kwargs", json.dumps(TINY), "--epochs", "2",
           "--batch-size", "4", "--workers", "0", "--threads", "1", "--device", "cpu",
           "--no-progress-bar", "--val-split", "6",
           "--lean-training"]  # DDP's gradient hooks around vitmix's own autograd functions
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report: ") == 1  # only rank 0 speaks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["effective_batch"] == 8
    # Both processes held out the same 6 training images (each checked the others' split),
    # and every image of each split counted once over both.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = hold_out_validation(load_splits(str(image_tree), 1), 6).held_out.digest
    assert summary["val"]["held_out"]["digest"] == here
    assert summary["val"]["trained"]["count"] == 6 and summary["test"]["trained"]["count"] == 12
    assert summary["deployed"]["top1"] == pytest.approx(summary["trained"]["top1"])
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["val_split_digest"] == here
    assert ckpt["num_updates"] == 2 * 2  # 18 training images, 2 ranks x 4: 2 steps per epoch
    assert not list(out.glob("*.tmp"))


def test_compiled_training_forward_ends_with_the_eager_weights(image_tree, tmp_path):
    # Dynamo's "eager" backend traces the training forward as inductor would, but runs the
    # captured graph with the ordinary kernels, so the weights must agree to rounding.
    from torch._dynamo.utils import counters

    eager = quiet_fit(tiny_config(image_tree, tmp_path / "eager", epochs=1))
    counters.clear()
    compiled = quiet_fit(tiny_config(image_tree, tmp_path / "compiled", epochs=1,
                                     compile="eager"))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did capture the forward
    want = load_checkpoint(tmp_path / "eager" / "last.pth")["model"]
    got = load_checkpoint(tmp_path / "compiled" / "last.pth")["model"]
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
    assert compiled.top1 == pytest.approx(eager.top1)


def test_channels_last_training_memory_gives_the_same_function():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("schemeformer_ppaa_t_e8_g4", num_classes=3, in_chans=1,
                              img_size=32, **TINY).train()
    x = torch.randn(4, 1, 32, 32)
    torch.manual_seed(1)
    reference = model(x)
    fast = model.to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)
