"""The shipped recipes against the authors' values, how a recipe, a --config file and flags
combine, and the settings the recipes brought: the learning-rate scaling rules and the
per-epoch and per-update schedules, against rates worked out by hand. (The evaluation crop in
a run's transforms: test_train.py; in `vitmix eval`: test_eval.py.)"""

from __future__ import annotations

import csv
import json
import math
import tomllib
import warnings
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from tiny_runs import TINY
from vitmix import cli
from vitmix.commands.train import config_from_args
from vitmix.train import TrainConfig
from vitmix.train.recipes import load_recipe, recipe_config, recipe_names
from vitmix.train.schedule import build_scheduler, cosine_span, learning_rates

pytestmark = pytest.mark.filterwarnings("ignore:.*unreadable:UserWarning")
REPO = Path(__file__).resolve().parents[1]

# --- The authors' values, as their releases state them ---------------------------------------
# SCHEME (scheme_vit, branch master, timm 0.6.11's train.py): the scripts train at lr 4e-3 on
# 8 GPUs x 128 images x 4 accumulation steps (README: lr = batch / 1024 * 1e-3); train.py's
# defaults: warm-up lr 1e-6 and min lr 1e-5 as given (not scaled), 5 warm-up epochs in the S-size
# scripts, 300 epochs then 10 cooldown epochs, sched stepped per epoch, no clipping, no EMA,
# train interpolation "random"; schemeformer.py's _cfg: crop 0.95, bicubic.
SCHEME = dict(epochs=300, cooldown=10, warmup_epochs=5, per="epoch", gpus=8, batch=128, accum=4,
              lr_at_their_batch=4e-3, lr_per=1024, warmup_lr=1e-6, min_lr=1e-5,
              bounds_scale=False, weight_decay=0.05, mixup=0.8, cutmix=1.0, smoothing=0.1,
              randaugment="rand-m9-mstd0.5-inc1", re_prob=0.25, crop_scale=(0.08, 1.0),
              train_interpolation="random", eval_interpolation="bicubic", eval_crop=0.95,
              clip=None, ema=False)
# GroupMixFormer (AILab-CVC/GroupMixFormer): config.py's defaults: base lr 5e-4, warm-up lr 5e-7,
# min lr 5e-6, all three times batch x GPUs x accumulation / 512; 128 images per GPU; clip 5;
# cosine per update; configs/*.yaml: 300 epochs, 20 warm-up; data/build.py: bicubic, evaluation
# resized to 256 and centre-cropped to 224.
GROUPMIXFORMER = dict(epochs=300, cooldown=0, warmup_epochs=20, per="update", gpus=8, batch=128,
                      accum=1, lr_at_their_batch=5e-4 * 1024 / 512, lr_per=512,
                      warmup_lr=5e-7 * 1024 / 512, min_lr=5e-6 * 1024 / 512, bounds_scale=True,
                      weight_decay=0.05, mixup=0.8, cutmix=1.0, smoothing=0.1,
                      randaugment="rand-m9-mstd0.5-inc1", re_prob=0.25, crop_scale=(0.08, 1.0),
                      train_interpolation="bicubic", eval_interpolation="bicubic",
                      eval_crop=224 / 256, clip=5.0, ema=False)
# Drop path: the scheme_vit S12/S24/S36 scripts (poolformerv2, identityformer): 0.1, 0.1, 0.2;
# GroupMixFormer's configs: miny 0.1, tiny 0.1, small 0.2, base 0.5, large 0.1.
AUTHORS = {
    "schemeformer_ppaa_s12_e8_g4": (SCHEME, 0.1),
    "schemeformer_ppaa_s24_e8_g4": (SCHEME, 0.1),
    "schemeformer_ppaa_s36_e8_g4": (SCHEME, 0.2),
    "metaformer_ppaa_s12": (SCHEME, 0.1),
    "metaformer_ppaa_s24": (SCHEME, 0.1),
    "metaformer_ppaa_s36": (SCHEME, 0.2),
    "groupmixformer_m": (GROUPMIXFORMER, 0.1),
    "groupmixformer_t": (GROUPMIXFORMER, 0.1),
    "groupmixformer_s": (GROUPMIXFORMER, 0.2),
    "groupmixformer_b": (GROUPMIXFORMER, 0.5),
    "groupmixformer_l": (GROUPMIXFORMER, 0.1),
}


def test_the_shipped_recipes_are_the_ones_the_authors_values_are_written_for():
    assert recipe_names() == sorted(AUTHORS)


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_each_recipe_holds_its_authors_values(name):
    facts, drop_path = AUTHORS[name]
    config = recipe_config(name, data="/data/imagenet")
    assert config.model == name and config.recipe == name
    assert (config.in_chans, config.img_size) == (3, 224)
    assert (config.epochs, config.cooldown_epochs) == (facts["epochs"], facts["cooldown"])
    assert config.run_epochs == facts["epochs"] + facts["cooldown"]
    assert config.warmup_epochs == facts["warmup_epochs"]
    assert config.sched_on == facts["per"] and config.warmup_prefix is False
    assert (config.batch_size, config.accum_steps) == (facts["batch"], facts["accum"])
    assert config.lr_base_size == facts["lr_per"]
    assert config.scale_warmup_and_min_lr is facts["bounds_scale"]
    # The rates at the authors' own global batch are the ones their runs had.
    rates = learning_rates(config, facts["gpus"] * facts["batch"] * facts["accum"])
    assert rates.peak == pytest.approx(facts["lr_at_their_batch"], rel=1e-12)
    assert rates.warmup_start == pytest.approx(facts["warmup_lr"], rel=1e-12)
    assert rates.floor == pytest.approx(facts["min_lr"], rel=1e-12)
    assert config.weight_decay == facts["weight_decay"]
    assert config.drop_path == drop_path
    assert (config.mixup, config.cutmix) == (facts["mixup"], facts["cutmix"])
    assert config.label_smoothing == facts["smoothing"]
    assert config.auto_augment == facts["randaugment"]
    assert config.re_prob == facts["re_prob"]
    assert config.crop_scale == facts["crop_scale"] and config.hflip == 0.5
    assert config.train_interpolation == facts["train_interpolation"]
    assert config.eval_interpolation == facts["eval_interpolation"]
    assert config.eval_crop_pct == pytest.approx(facts["eval_crop"])
    assert config.clip_grad == facts["clip"]
    assert config.ema is facts["ema"] and config.final_weights == "model"
    assert config.loader == "dataloader"  # RandAugment: timm's transforms in workers
    recipe = load_recipe(name)
    assert recipe.model == name and "\n" not in recipe.description
    assert recipe.source and "\n" not in recipe.source


def test_every_recipe_file_ships_in_the_wheel():
    """setuptools packs what pyproject's package-data names; every recipe file must match."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["vitmix"]
    files = sorted((REPO / "src" / "vitmix" / "recipes").iterdir())
    assert files and all(any(fnmatch(f"recipes/{f.name}", p) for p in patterns) for f in files)


# --- A recipe, a --config file and flags -------------------------------------------------------
def parse(*argv: str) -> TrainConfig:
    return config_from_args(cli.build_parser().parse_args(["train", *argv]))


def test_a_config_file_overrides_the_recipe_and_flags_override_both(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 100\ndrop_path: 0.3\ndata: /data/in1k\n")
    config = parse("--recipe", "schemeformer_ppaa_s12_e8_g4", "--config", str(path),
                   "--drop-path", "0.4")
    assert config.drop_path == 0.4  # flag over file over recipe (0.1)
    assert config.epochs == 100 and config.data == "/data/in1k"  # file over recipe (300)
    assert (config.batch_size, config.sched_on) == (128, "epoch")  # the recipe's
    assert config.seed == 0  # set by none of them: the default
    assert config.recipe == "schemeformer_ppaa_s12_e8_g4"
    # A --config file may name the recipe itself; --recipe replaces it, --recipe none drops it.
    path.write_text("recipe: groupmixformer_m\ndata: /data/in1k\nepochs: 30\n")
    config = parse("--config", str(path))
    assert (config.model, config.lr_base_size, config.epochs) == ("groupmixformer_m", 512, 30)
    config = parse("--config", str(path), "--recipe", "groupmixformer_b")
    assert (config.model, config.drop_path, config.recipe) == ("groupmixformer_b", 0.5,
                                                               "groupmixformer_b")
    config = parse("--config", str(path), "--recipe", "none")
    assert (config.model, config.recipe) == (TrainConfig().model, None)


def test_a_runs_config_yaml_gives_back_the_same_config(tmp_path):
    config = recipe_config("groupmixformer_s", data="/data/in1k", epochs=30)
    config.save(tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["recipe"] == "groupmixformer_s"
    assert parse("--config", str(tmp_path / "config.yaml")) == config


def test_recipe_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    names = ", ".join(sorted(AUTHORS))
    cases = [
        (["--recipe", "schemeformer_s12", "--data", "/data/in1k"],
         f"vitmix train: error: unknown recipe 'schemeformer_s12'; the recipes are {names} "
         f"(`vitmix recipes` describes them)"),
        (["--recipe", "groupmixformer_t"],
         "vitmix train: error: recipe 'groupmixformer_t' sets how to train, not on what: give "
         "the data with --data PATH (data=... in Python), e.g. an ImageNet-1K tree with train/ "
         "and val/, or webdataset shards"),
        # SCHEME's schedule is per epoch with a cooldown: a time budget needs neither.
        (["--recipe", "schemeformer_ppaa_s12_e8_g4", "--data", "/data/in1k", "--time-budget",
          "60"], "vitmix train: error: a time_budget plans the run in updates and re-plans as "
                 "it goes; its schedule needs sched_on='update' (--sched-on update), got "
                 "sched_on='epoch'"),
        (["--recipe", "schemeformer_ppaa_s12_e8_g4", "--data", "/data/in1k", "--time-budget",
          "60", "--sched-on", "update"],
         "vitmix train: error: with a time_budget the epochs are what fits, so there are none to "
         "add after the cosine; pass cooldown_epochs=0 (--cooldown-epochs 0), got 10"),
    ]
    for args, message in cases:
        out = tmp_path / "run"
        assert cli.main(["train", "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err == message + "\n"
        assert not out.exists()
    assert cli.main(["recipes", "nope"]) == 2
    assert capsys.readouterr().err.startswith("vitmix recipes: error: unknown recipe 'nope'; ")


def test_vitmix_recipes_lists_name_model_and_description(capsys):
    assert cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["recipe", "model", "description"]
    rows = {line.split()[0]: line.split(maxsplit=2) for line in lines[1:]}
    assert sorted(rows) == sorted(AUTHORS)
    assert rows["groupmixformer_b"][1:] == [
        "groupmixformer_b", "GroupMixFormer-B (45.8M params, 17.55G MACs) on ImageNet-1K, the "
                            "GroupMixFormer authors' recipe"]
    # --help names them too.
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["train"]
                         .format_help().split())
    assert all(name in help_text for name in AUTHORS)


def test_vitmix_recipes_name_prints_a_config_file_of_the_recipe(tmp_path, capsys):
    assert cli.main(["recipes", "metaformer_ppaa_s36"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# metaformer_ppaa_s36: dense MetaFormer PPAA-S36")
    (tmp_path / "s36.yaml").write_text(text)
    from_file = parse("--config", str(tmp_path / "s36.yaml"), "--data", "/data/in1k")
    # The same values, without the record of a recipe (the file is a plain config).
    expected = recipe_config("metaformer_ppaa_s36", data="/data/in1k").to_dict()
    assert from_file.to_dict() == dict(expected, recipe=None)


# --- Learning-rate scaling ----------------------------------------------------------------------
def test_the_learning_rate_scales_with_the_effective_batch_by_either_rule():
    # vitmix's default, unchanged: base_lr per 1024, warm-up from a thousandth, floor as given.
    rates = learning_rates(TrainConfig(), 128)
    assert (rates.peak, rates.warmup_start, rates.floor) == pytest.approx((1e-3, 1e-6, 1e-6))
    # SCHEME on 4 GPUs instead of 8, same per-GPU batch: half the rate, the same bounds.
    scheme = recipe_config("schemeformer_ppaa_s12_e8_g4", data="d")
    rates = learning_rates(scheme, 4 * 128 * 4)
    assert (rates.peak, rates.warmup_start, rates.floor) == pytest.approx((2e-3, 1e-6, 1e-5))
    # GroupMixFormer: all three per 512 images; 16 GPUs x 128 x 2 accumulation = 4096 images.
    gmf = recipe_config("groupmixformer_s", data="d")
    rates = learning_rates(gmf, 16 * 128 * 2)
    assert (rates.peak, rates.warmup_start, rates.floor) == pytest.approx(
        (5e-4 * 8, 5e-7 * 8, 5e-6 * 8))
    # Without warmup_lr, the warm-up starts at a thousandth of the scaled rate either way.
    rates = learning_rates(TrainConfig(lr_base_size=512, scale_warmup_and_min_lr=True), 256)
    assert (rates.peak, rates.warmup_start, rates.floor) == pytest.approx((4e-3, 4e-6, 5e-7))


# --- Schedules, against rates worked out by hand ------------------------------------------------
def cosine(t: float, length: float, peak: float, floor: float) -> float:
    """The cosine from ``peak`` at t = 0 to ``floor`` at t = length."""
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * t / length))


def warmup(t: float, length: float, start: float, peak: float) -> float:
    """The straight line from ``start`` at t = 0 to ``peak`` at t = length."""
    return start + t / length * (peak - start)


def optimizer_at(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr)


def test_the_per_epoch_schedule_with_warmup_and_cooldown():
    """SCHEME's: 5 warm-up epochs from 1e-6 overlaid on a 300-epoch cosine from 4e-3 to 1e-5,
    then 10 epochs at 1e-5; the rate of each epoch, as timm 0.6's train script set it."""
    config = recipe_config("schemeformer_ppaa_s12_e8_g4", data="d")
    rates = learning_rates(config, 8 * 128 * 4)
    optimizer = optimizer_at(rates.peak)
    scheduler = build_scheduler(optimizer, config, rates, cosine_updates=0, warmup_updates=0)
    peak, floor = 4e-3, 1e-5
    expected = {0: 1e-6, 1: warmup(1, 5, 1e-6, peak), 4: warmup(4, 5, 1e-6, peak),
                5: cosine(5, 300, peak, floor), 6: cosine(6, 300, peak, floor),
                150: (peak + floor) / 2, 299: cosine(299, 300, peak, floor),
                300: floor, 305: floor, 309: floor}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)  # before the first epoch
    for epoch, lr in expected.items():
        scheduler.step(epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch
        scheduler.step_update(epoch * 1000 + 7)  # per epoch: updates change nothing
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), epoch


def test_the_per_update_schedules():
    """GroupMixFormer's, at 100 updates per epoch: 2000 warm-up updates from 1e-6 overlaid on
    a 30,000-update cosine from 1e-3 to 1e-5; and vitmix's own, whose cosine starts where the
    warm-up ends and which has a cooldown here."""
    config = recipe_config("groupmixformer_m", data="d")
    rates = learning_rates(config, 8 * 128)
    optimizer = optimizer_at(rates.peak)
    scheduler = build_scheduler(optimizer, config, rates, cosine_updates=30_000,
                                warmup_updates=2000)
    peak, start, floor = 1e-3, 1e-6, 1e-5
    expected = {0: start, 1: warmup(1, 2000, start, peak), 1999: warmup(1999, 2000, start, peak),
                2000: cosine(2000, 30_000, peak, floor), 15_000: (peak + floor) / 2,
                29_999: cosine(29_999, 30_000, peak, floor), 30_000: floor}
    for update, lr in expected.items():
        scheduler.step_update(update)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), update
        scheduler.step(3)  # per update: epochs change nothing
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), update

    config = TrainConfig(epochs=10, warmup_epochs=1, cooldown_epochs=2, base_lr=2e-3,
                         min_lr=1e-5)
    rates = learning_rates(config, 512)  # peak 1e-3, warm-up from 1e-6
    optimizer = optimizer_at(rates.peak)
    scheduler = build_scheduler(optimizer, config, rates, cosine_updates=1000, warmup_updates=100)
    peak, start, floor = 1e-3, 1e-6, 1e-5
    expected = {0: start, 50: warmup(50, 100, start, peak), 100: peak,
                550: (peak + floor) / 2, 700: cosine(600, 900, peak, floor), 1000: floor,
                1199: floor}
    for update, lr in expected.items():
        scheduler.step_update(update)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), update


def test_a_time_budget_maps_its_progress_onto_either_kind_of_warmup():
    """TimeBudget.lr_position gives warm-up + share x span; with the warm-up overlaid the
    cosine still ends at its end (the floor) and starts where the warm-up ends."""
    for prefix in (True, False):
        config = TrainConfig(warmup_prefix=prefix, time_budget=5)
        scheduler = build_scheduler(optimizer_at(1e-3), config, learning_rates(config, 1024),
                                    cosine_updates=1000, warmup_updates=100)
        assert scheduler.t_initial == (900 if prefix else 1000)
        span = cosine_span(scheduler)
        assert span == 900
        scheduler.step_update(100 + span)  # the budget's last update
        assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(config.min_lr)
        scheduler.step_update(100)
        expected = 1e-3 if prefix else cosine(100, 1000, 1e-3, config.min_lr)
        assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_a_run_sets_the_rate_per_epoch_and_trains_its_cooldown(image_tree, tmp_path, capsys):
    """A tiny run of the SCHEME recipe (its model and data made tiny): 1 warm-up epoch, a
    2-epoch cosine, 1 cooldown epoch, the rate of each epoch in metrics.csv, the recipe's
    name in config.yaml, its evaluation crop in the deployed weights."""
    out = tmp_path / "run"
    argv = ["train", "--recipe", "schemeformer_ppaa_s12_e8_g4", "--data", str(image_tree),
            "--out", str(out), "--model", "schemeformer_ppaa_t_e8_g4",
            "--model-kwargs", json.dumps(TINY), "--img-size", "32", "--in-chans", "1",
            "--epochs", "2", "--warmup-epochs", "1", "--cooldown-epochs", "1",
            "--batch-size", "8", "--accum-steps", "1", "--base-lr", "0.512", "--workers", "0",
            "--threads", "1", "--no-progress-bar"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    capsys.readouterr()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    peak, floor = 0.512 * 8 / 1024, 1e-5  # the recipe's floor, not scaled
    assert [float(r["lr"]) for r in rows] == pytest.approx(
        [1e-6, cosine(1, 2, peak, floor), floor], rel=1e-9)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["recipe"] == "schemeformer_ppaa_s12_e8_g4"
    assert (saved["epochs"], saved["cooldown_epochs"], saved["sched_on"]) == (2, 1, "epoch")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["updates"] == 9  # 3 batches of 8 per epoch
    with safe_open(str(out / "model_deployed.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert (meta["eval_crop_pct"], meta["eval_interpolation"]) == ("0.95", "bicubic")
