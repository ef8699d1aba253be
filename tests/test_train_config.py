"""TrainConfig's rules: every field has one, and every wrong value, from Python, YAML or a flag,
fails in one line naming the field, the value and what is allowed, before anything is read."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from vitmix import cli
from vitmix.layers.checks import Rule
from vitmix.train import TrainConfig

# One wrong value per field at least: a wrong type, and a value out of range or choices.
# (field, value, what the message says is allowed)
BAD_VALUES = [
    ("model", "", "a non-empty string"),
    ("model", 3, "a non-empty string"),
    ("model_kwargs", [1, 2], "a mapping of argument names to values"),
    ("model_kwargs", "{}", "a mapping of argument names to values"),
    ("schemify", {"groups": 0}, "None or a mapping of groups, expansion, cca, cca_schedule"),
    ("schemify", "2", "None or a mapping of groups, expansion, cca, cca_schedule"),
    ("init_from", "", "a non-empty string or None"),
    ("grouping", "best", "one of 'search', 'diagonal'"),
    ("teacher", 3, "a non-empty string or None"),
    ("distill_weight", 1.5, r"a number in \[0, 1\]"),
    ("distill_temperature", 0, r"a number in \[0.1, 100\]"),
    ("data", None, "a non-empty string"),
    ("data_dir", 5, "a non-empty string or None"),
    ("data_image_key", "", "a non-empty string or None"),
    ("data_label_key", 1, "a non-empty string or None"),
    ("img_size", 0, "a positive integer"),
    ("img_size", 32.0, "a positive integer"),
    ("in_chans", 2, "one of 1, 3"),
    ("in_chans", True, "one of 1, 3"),
    ("out_dir", "  ", "a non-empty string"),
    ("val_split", -1, r"'auto', a non-negative integer up to 1000000000 \(0: none\) or None"),
    ("val_split", "5000", r"'auto', a non-negative integer up to 1000000000 \(0: none\) or None"),
    ("val_split", 0.5, r"'auto', a non-negative integer up to 1000000000 \(0: none\) or None"),
    ("val_split", True, r"'auto', a non-negative integer up to 1000000000 \(0: none\) or None"),
    ("epochs", 0, "a positive integer"),
    ("epochs", 2.5, "a positive integer"),
    ("epochs", "10", "a positive integer"),
    ("cooldown_epochs", -1, "a non-negative integer"),
    ("cooldown_epochs", 2.5, "a non-negative integer"),
    ("time_budget", -5, "a positive number or None"),
    ("time_budget", 0, "a positive number or None"),
    ("time_budget", "30", "a positive number or None"),
    ("time_budget", float("inf"), "a positive number or None"),
    ("batch_size", -8, "a positive integer"),
    ("accum_steps", 0, "a positive integer"),
    ("base_lr", 0, "a positive number"),
    ("base_lr", "1e-3", "a positive number"),
    ("base_lr", float("inf"), "a positive number"),
    ("lr_base_size", 0, "a positive integer"),
    ("lr_base_size", 512.0, "a positive integer"),
    ("min_lr", -1e-6, "a non-negative number"),
    ("warmup_epochs", -1, "a non-negative number"),
    ("warmup_lr", -1e-6, "a non-negative number or None"),
    ("warmup_lr", "5e-7", "a non-negative number or None"),
    ("scale_warmup_and_min_lr", "yes", "True or False"),
    ("warmup_prefix", 0, "True or False"),
    ("sched_on", "step", "one of 'update', 'epoch'"),
    ("weight_decay", float("nan"), "a non-negative number"),
    ("clip_grad", 0, "a positive number or None"),
    ("clip_grad", "5", "a positive number or None"),
    ("drop_path", 1.0, r"a number in \[0, 1\)"),
    ("ema", "false", "True or False"),
    ("ema", 1, "True or False"),
    ("ema_decay", 1.0, r"a number in \[0, 1\)"),
    ("ema_warmup", None, "True or False"),
    ("final_weights", "best", "one of 'ema', 'model'"),
    ("amp", "fp8", "one of 'auto', 'off', 'bf16', 'fp16'"),
    ("channels_last", "yes", "True or False"),
    ("accelerate", 1, "True or False"),
    ("lean_training", "yes", "True or False"),
    ("compile", "no_such_backend", "None or a torch.compile backend"),
    ("auto_augment", "no_such_policy", "None or a timm auto-augment string"),
    ("auto_augment", 6, "None or a timm auto-augment string"),
    ("re_prob", 1.5, r"a probability in \[0, 1\]"),
    ("crop_scale", (0.8, 0.6), r"two numbers \(low, high\) with 0 < low <= high <= 1"),
    ("crop_scale", (0.5,), r"two numbers \(low, high\)"),
    ("crop_scale", "0.5 1", r"two numbers \(low, high\)"),
    ("train_interpolation", "cubic", "one of 'random', 'bicubic', 'bilinear', 'nearest', 'box', "
                                     "'hamming', 'lanczos'"),
    ("hflip", -0.1, r"a probability in \[0, 1\]"),
    ("color_jitter", -0.4, "a non-negative number"),
    ("mixup", -0.2, "a non-negative number"),
    ("cutmix", "none", "a non-negative number"),
    ("label_smoothing", 1.0, r"a number in \[0, 1\)"),
    ("eval_crop_pct", 0, r"a number in \(0, 1\]"),
    ("eval_crop_pct", 1.2, r"a number in \(0, 1\]"),
    ("eval_crop_pct", "0.875", r"a number in \(0, 1\]"),
    ("eval_interpolation", "random", "one of 'bicubic', 'bilinear', 'nearest', 'box', "
                                     "'hamming', 'lanczos'"),
    ("seed", -1, "a non-negative integer"),
    ("workers", 1.5, "a non-negative integer up to 1024 or None"),
    ("workers", -1, "a non-negative integer up to 1024 or None"),
    ("loader", "fast", "one of 'auto', 'dataloader', 'tensor'"),
    ("device", "tpu", "one of 'auto', 'cpu', 'cuda'"),
    ("sync_bn", "on", "True or False"),
    ("tf32", 1, "True or False"),
    ("cudnn_benchmark", None, "True or False"),
    ("log_interval", 0, "a positive integer"),
    ("log_interval", 2.5, "a positive integer"),
    ("threads", 0, "a positive integer up to 4096 or None"),
    ("eval_ema_each_epoch", 0, "True or False"),
    ("max_train_batches", 0, "a positive integer up to 1000000000 or None"),
    ("max_val_batches", 2.0, "a positive integer up to 1000000000 or None"),
    ("verify_images", "quick", "one of 'auto', 'decode', 'header', 'none'"),
    ("progress_bar", "no", "True or False"),
    ("recipe", "", "a non-empty string or None"),
]


def test_every_field_has_a_rule_and_a_bad_value_here():
    fields = dataclasses.fields(TrainConfig)
    assert all(isinstance(f.metadata.get("rule"), Rule) for f in fields)
    # A field added without a case above fails here: add one.
    assert {f.name for f in fields} == {name for name, _, _ in BAD_VALUES}


@pytest.mark.parametrize("name,value,allowed", BAD_VALUES,
                         ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_a_wrong_value_names_the_field_the_value_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ValueError, match=f"^{name} must be {allowed}.*, got "
                                         f"{__import__('re').escape(repr(value))}$"):
        TrainConfig(**{name: value})


def test_the_defaults_and_every_field_round_trip_through_yaml(tmp_path):
    config = TrainConfig(data_dir="/data/fm", clip_grad=None, auto_augment=None,
                         crop_scale=(0.5, 1), threads=2, compile="eager", time_budget=2.5,
                         train_interpolation="random", eval_crop_pct=0.875, warmup_lr=5e-7,
                         lr_base_size=512, scale_warmup_and_min_lr=True, warmup_prefix=False,
                         recipe="groupmixformer_m")
    config.save(tmp_path / "config.yaml")
    assert TrainConfig.load(tmp_path / "config.yaml") == config
    assert TrainConfig().val_split == "auto" and TrainConfig().time_budget is None
    for val_split in ("auto", 5000, 0, None):
        TrainConfig(val_split=val_split).save(tmp_path / "config.yaml")
        assert TrainConfig.load(tmp_path / "config.yaml").val_split == val_split
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # written atomically


def test_the_loader_auto_picks_the_tensor_loader_where_it_can_do_what_is_asked():
    assert TrainConfig().loader == "tensor"  # the defaults: Fashion-MNIST, light augmentation
    assert TrainConfig(auto_augment="rand-m6").loader == "dataloader"
    assert TrainConfig(color_jitter=0.4).loader == "dataloader"
    assert TrainConfig(data="/data/imagenet").loader == "dataloader"
    assert TrainConfig(loader="dataloader").loader == "dataloader"
    # The tensor loader resamples bicubically: timm's "random" needs the PIL transforms.
    assert TrainConfig(train_interpolation="random").loader == "dataloader"


def test_cross_field_rules():
    with pytest.raises(ValueError, match="batch_size must be even, got 7"):
        TrainConfig(batch_size=7, mixup=0.2)
    TrainConfig(batch_size=7)
    with pytest.raises(ValueError, match=r"warmup_epochs must lie in \[0, epochs=2\], got 3"):
        TrainConfig(epochs=2, warmup_epochs=3)
    # With a time budget the epochs are what fits, and the warm-up is capped where it is
    # planned (at half the run).
    TrainConfig(epochs=2, warmup_epochs=3, time_budget=10)
    with pytest.raises(ValueError, match="the tensor loader has no RandAugment"):
        TrainConfig(loader="tensor", auto_augment="rand-m6")
    with pytest.raises(ValueError, match="lean_training runs vitmix.accelerate's functions, "
                       "so it needs accelerate=True"):
        TrainConfig(accelerate=False, lean_training=True)
    with pytest.raises(ValueError, match="the tensor loader has no colour jitter"):
        TrainConfig(loader="tensor", color_jitter=0.4)
    with pytest.raises(ValueError, match="data_dir names the folder of the Fashion-MNIST files"):
        TrainConfig(data="/data/imagenet", data_dir="/data/fm")
    with pytest.raises(ValueError, match="data_label_key names the image or label of a Hugging "
                       "Face dataset or of webdataset samples; Fashion-MNIST has no other"):
        TrainConfig(data_label_key="fine_label")
    assert TrainConfig(data="/data/shards", data_label_key="fine_label").data_label_key
    assert TrainConfig(ema=False).final_weights == "model"
    with pytest.raises(ValueError, match="^the tensor loader resamples its crops bicubically; "
                       "pass train_interpolation='bicubic' .* got 'random'$"):
        TrainConfig(loader="tensor", train_interpolation="random")


def test_schedule_rules():
    # A time budget plans updates as it goes: no whole epochs to set a rate for, none to add.
    with pytest.raises(ValueError, match=r"^a time_budget plans the run in updates .* needs "
                       r"sched_on='update' \(--sched-on update\), got sched_on='epoch'$"):
        TrainConfig(time_budget=5, sched_on="epoch", warmup_epochs=1)
    with pytest.raises(ValueError, match=r"^with a time_budget the epochs are what fits.*pass "
                       r"cooldown_epochs=0 \(--cooldown-epochs 0\), got 10$"):
        TrainConfig(time_budget=5, cooldown_epochs=10)
    TrainConfig(time_budget=5, warmup_prefix=False, scale_warmup_and_min_lr=True)
    # Per epoch the rate changes at epoch starts: whole warm-up epochs, and a cosine after them.
    for warmup in (0.2, 10):
        with pytest.raises(ValueError, match=rf"^with sched_on='epoch' the rate changes once per "
                           rf"epoch, so warmup_epochs must be a whole number below epochs=10, "
                           rf"got {warmup}$"):
            TrainConfig(sched_on="epoch", warmup_epochs=warmup)
    TrainConfig(sched_on="epoch", warmup_epochs=5, cooldown_epochs=10)
    assert TrainConfig(epochs=300, cooldown_epochs=10).run_epochs == 310
    assert TrainConfig(epochs=300).run_epochs == 300


def test_yaml_values_are_checked_by_the_same_rules(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: ten\n")
    with pytest.raises(ValueError,
                       match="^epochs must be a positive integer up to 100000, got 'ten'$"):
        TrainConfig.load(path)
    path.write_text("crop_scale: [0.9, 0.1]\n")
    with pytest.raises(ValueError, match=r"^crop_scale must be two numbers"):
        TrainConfig.load(path)
    path.write_text("- epochs\n")
    with pytest.raises(ValueError, match="must hold a mapping of config keys, got list"):
        TrainConfig.load(path)
    path.write_text("epochs: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.load(path)
    with pytest.raises(ValueError, match="unknown config keys.*lr_base"):
        TrainConfig.from_dict({"lr_base": 1.0})
    with pytest.raises(ValueError, match="is a folder; give a YAML file"):
        TrainConfig.load(tmp_path)
    # YAML 1.1 reads 1e-3 as a string; people write it for a number, and get one.
    path.write_text("base_lr: 1e-3\nmin_lr: 2.5E-7\nepochs: 3\nmixup: 0.5\n")
    config = TrainConfig.load(path)
    assert (config.base_lr, config.min_lr, config.epochs, config.mixup) == (1e-3, 2.5e-7, 3, 0.5)


def test_the_command_line_refuses_bad_values_in_one_line_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"mixup": "lots"}))
    cases = [
        (["--config", str(bad)], "vitmix train: error: mixup must be a non-negative number, "
                                 "got 'lots'"),
        (["--base-lr", "-1"], "vitmix train: error: base_lr must be a positive number, got -1.0"),
        (["--drop-path", "1.5"], r"vitmix train: error: drop_path must be a number in [0, 1), "
                                 r"got 1.5"),
        (["--time-budget", "-5"], "vitmix train: error: time_budget must be a positive number "
                                  "or None, got -5.0"),
        (["--val-split", "-3"], "vitmix train: error: val_split must be 'auto', a non-negative "
                                "integer up to 1000000000 (0: none) or None, got -3"),
        (["--eval-crop-pct", "1.5"], "vitmix train: error: eval_crop_pct must be a number in "
                                     "(0, 1], got 1.5"),
        (["--sched-on", "step"], "vitmix train: error: sched_on must be one of 'update', "
                                 "'epoch', got 'step'"),
        (["--sched-on", "epoch", "--time-budget", "5"], "vitmix train: error: a time_budget "
                                                        "plans the run in updates"),
        (["--config", str(tmp_path / "none.yaml")], "vitmix train: error: config file"),
    ]
    for args, message in cases:
        out = tmp_path / "run"
        assert cli.main(["train", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1, err
        assert not out.exists()


def test_val_split_and_time_budget_flags(capsys):
    from vitmix.commands.train import config_from_args

    parse = cli.build_parser().parse_args
    for text, value in (("auto", "auto"), ("none", None), ("0", 0), ("5000", 5000)):
        assert config_from_args(parse(["train", "--val-split", text])).val_split == value
    assert config_from_args(parse(["train", "--time-budget", "2.5"])).time_budget == 2.5
    assert config_from_args(parse(["train", "--time-budget", "none"])).time_budget is None
    with pytest.raises(SystemExit) as exit_info:
        parse(["train", "--val-split", "many"])
    assert exit_info.value.code == 2
    assert ("argument --val-split: must be auto, none or a number of images, got 'many'"
            in capsys.readouterr().err)


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "must be a JSON object such as"),
    ("{cca: 1}", "not JSON"),
])
def test_model_kwargs_must_be_a_json_object(capsys, text, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model-kwargs", text])
    assert exit_info.value.code == 2
    assert f"argument --model-kwargs: {message}" in capsys.readouterr().err
