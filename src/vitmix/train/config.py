"""Everything a training run needs, as one dataclass that round-trips through config.yaml.

Every field carries the rule its values must follow (a type and a range or a set of choices),
checked in one place, :meth:`TrainConfig.validate`, when the config is made: a wrong flag, YAML
value or Python argument fails with one line naming the field, the value and what is allowed,
before any data is read. Adding a setting is one line: its name, type, default and rule.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checkpoints.io import atomic_write_text
from ..compression.spec import SCHEMIFY_SPEC
from ..compression.surgery import GROUPINGS
from ..data.image_folder import VERIFY_MODES
from ..data.transforms import INTERPOLATIONS, TRAIN_INTERPOLATIONS
from ..layers.checks import (
    BOOL,
    FRACTION,
    KEYWORDS,
    NON_NEGATIVE_NUMBER,
    POSITIVE_NUMBER,
    PROBABILITY,
    TEXT,
    Rule,
    int_up_to,
    number_in,
    one_of,
    optional,
)
from ..limits import (
    MAX_ACCUM_STEPS,
    MAX_BATCH_SIZE,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_IMG_SIZE,
    MAX_SEED,
    MAX_THREADS,
    MAX_WORKERS,
)
from ..messages import abbreviate, quoted
from ..model_arguments import check_model_kwargs
from ..paths import check_input_file
from ..structured_text import load_yaml, read_bounded_text

__all__ = ["TrainConfig"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
# PyYAML's account of a syntax error quotes the line it is on, which may be a long one.
MAX_YAML_PROBLEM_CHARS = 300
LOADERS = ("auto", "dataloader", "tensor")
FINAL_WEIGHTS = ("ema", "model")
DEVICES = ("auto", "cpu", "cuda")
SCHED_ON = ("update", "epoch")
# Loader workers when workers=None: two on a CPU, whose cores train; on a GPU the cores a process
# may use less one, at most this many (train/engine.py's loader_workers).
CPU_LOADER_WORKERS = 2
MAX_GPU_LOADER_WORKERS = 16


def _is_crop_scale(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0 < value[0] <= value[1] <= 1)


def _is_auto_augment(value: Any) -> bool:
    """None, or a string timm's create_transform builds an augmentation from."""
    if value is None:
        return True
    if not isinstance(value, str) or not value:
        return False
    from timm.data import create_transform

    try:  # timm parses the string where it builds the transform; it asserts on bad ones
        create_transform(32, is_training=True, auto_augment=value)
    except Exception:
        return False
    return True


def _is_compile_backend(value: Any) -> bool:
    if value is None:
        return True
    import torch

    return isinstance(value, str) and value in torch.compiler.list_backends(exclude_tags=())


IMG_SIZE = int_up_to(MAX_IMG_SIZE)
IMAGE_COUNT = int_up_to(MAX_COUNT, low=0)


def _is_val_split(value: Any) -> bool:
    return value is None or value == "auto" or IMAGE_COUNT.test(value)


CROP_SCALE = Rule("two numbers (low, high) with 0 < low <= high <= 1", _is_crop_scale)
AUTO_AUGMENT = Rule("None or a timm auto-augment string such as 'rand-m9-mstd0.5'",
                    _is_auto_augment)
VAL_SPLIT = Rule(f"'auto', a non-negative integer up to {MAX_COUNT} (0: none) or None",
                 _is_val_split)
COMPILE_BACKEND = Rule("None or a torch.compile backend (torch.compiler.list_backends(), "
                       "e.g. 'inductor')", _is_compile_backend)


def setting(default: Any, rule: Rule) -> Any:
    """A config field with the rule its values must follow."""
    if isinstance(default, (dict, list)):  # a fresh copy for every config
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


@dataclass
class TrainConfig:
    # What to train on what.
    model: str = setting("schemeformer_ppaa_t_e8_g4_convstem", TEXT)
    # Extra timm.create_model arguments, from the allowlist of vitmix.model_arguments: the run
    # writes them to config.yaml, which a resumed run reads back like any file.
    model_kwargs: dict = setting({}, KEYWORDS)
    # SCHEME put into the built model: vitmix.schemify's arguments ({"groups": 2, "expansion":
    # null, "cca": false, "cca_schedule": "learned"}); None: the model as built. With init_from
    # it is how `vitmix compress` makes a SCHEME model of a trained dense one.
    schemify: dict | None = setting(None, SCHEMIFY_SPEC)
    # A checkpoint of the dense model whose weights the schemified model starts from, copied
    # into the diagonal blocks through the grouping ("search": the best; "diagonal": the units
    # in stored order). Read by a new run only; a resumed run has its own weights.
    init_from: str | None = setting(None, optional(TEXT))
    grouping: str = setting("search", one_of(*GROUPINGS))
    # Knowledge distillation from this checkpoint's model: the loss is (1 - distill_weight)
    # times the label loss plus distill_weight times T^2 KL at temperature distill_temperature.
    teacher: str | None = setting(None, optional(TEXT))
    distill_weight: float = setting(0.5, number_in(0, 1))
    distill_temperature: float = setting(1.0, number_in(0.1, 100))
    # Or a folder: an ImageFolder tree, webdataset shards or a saved Hugging Face dataset.
    data: str = setting("fashion-mnist", TEXT)
    # The folder of the Fashion-MNIST idx files (None: $VITMIX_FASHION_MNIST_DIR, else Debian's).
    data_dir: str | None = setting(None, optional(TEXT))
    # The image and label of a saved Hugging Face dataset (column names) or of webdataset
    # samples (file extensions); None: "image"/"img" and "label"/"labels", or any image and "cls".
    data_image_key: str | None = setting(None, optional(TEXT))
    data_label_key: str | None = setting(None, optional(TEXT))
    img_size: int = setting(32, IMG_SIZE)
    in_chans: int = setting(1, one_of(1, 3))
    out_dir: str = setting("runs/train", TEXT)
    # Training images held out to validate on (every choice is made on them; the test split is
    # evaluated once, at the end). "auto": 5000 for Fashion-MNIST, whose only other split is
    # its test split; none for a folder, whose val/ validates. With N > 0 a folder's val/
    # becomes its test split, and a folder without val/ needs N > 0. 0 or None: none.
    val_split: int | str | None = setting("auto", VAL_SPLIT)
    # Optimisation; lr = base_lr * (batch_size * accum_steps * world_size) / lr_base_size.
    # The epochs of the cosine schedule (ignored when time_budget is set).
    epochs: int = setting(10, int_up_to(MAX_EPOCHS))
    # Epochs at min_lr after the cosine (timm's --cooldown-epochs): the run trains
    # epochs + cooldown_epochs epochs.
    cooldown_epochs: int = setting(0, int_up_to(MAX_EPOCHS, low=0))
    # Minutes of wall time for the whole run, evaluations and checkpoints included (None: off,
    # epochs decide). The schedules span the updates that fit, estimated from the measured
    # speed and re-estimated as the run goes (train/budget.py).
    time_budget: float | None = setting(None, optional(POSITIVE_NUMBER))
    batch_size: int = setting(128, int_up_to(MAX_BATCH_SIZE))
    accum_steps: int = setting(1, int_up_to(MAX_ACCUM_STEPS))
    base_lr: float = setting(8e-3, POSITIVE_NUMBER)
    # The effective batch base_lr is the learning rate of: 1024 in the SCHEME release (its
    # lr = batch / 1024 * 1e-3), 512 in GroupMixFormer's.
    lr_base_size: int = setting(1024, int_up_to(MAX_BATCH_SIZE))
    min_lr: float = setting(1e-6, NON_NEGATIVE_NUMBER)
    warmup_epochs: float = setting(0.2, NON_NEGATIVE_NUMBER)
    # The learning rate the warm-up starts from (None: a thousandth of the learning rate).
    warmup_lr: float | None = setting(None, optional(NON_NEGATIVE_NUMBER))
    # Scale min_lr and warmup_lr with the batch as base_lr is (GroupMixFormer's release does;
    # the SCHEME release, timm's train script, takes them as they are).
    scale_warmup_and_min_lr: bool = setting(False, BOOL)
    # True: the cosine starts where the warm-up ends. False: it counts from the first step and
    # the warm-up overlays its start, as timm's CosineLRScheduler does by default and both
    # releases use it (their rate at the end of the warm-up is a little below the peak).
    warmup_prefix: bool = setting(True, BOOL)
    # Set the learning rate after every optimizer "update", or once per "epoch" (timm 0.6's
    # train script, which the SCHEME release uses; warm-up epochs are then whole epochs).
    sched_on: str = setting("update", one_of(*SCHED_ON))
    weight_decay: float = setting(0.05, NON_NEGATIVE_NUMBER)
    clip_grad: float | None = setting(5.0, optional(POSITIVE_NUMBER))
    drop_path: float = setting(0.0, number_in(0, 1, high_open=True))
    ema: bool = setting(True, BOOL)
    ema_decay: float = setting(0.999, number_in(0, 1, high_open=True))
    # Ramp the EMA decay up from 0 (timm's 1 - (1 + step)^(-2/3), capped at ema_decay), so that
    # in a short run neither the random initial weights nor the initial BatchNorm statistics
    # (running variance 1) linger in the average: at decay 0.999 a 12-epoch Fashion-MNIST run
    # kept 6% of them and its EMA model scored 44% against 91.7% for the raw weights.
    ema_warmup: bool = setting(True, BOOL)
    # Which weights the final evaluation and deployed model use.
    final_weights: str = setting("ema", one_of(*FINAL_WEIGHTS))
    amp: str = setting("auto", one_of(*AMP_MODES))  # auto: bf16 (or fp16) on CUDA, off on CPU
    # NHWC memory: much faster for convs and SchemeMlp on CPU.
    channels_last: bool = setting(True, BOOL)
    # A torch.compile backend ("inductor") for the training forward.
    compile: str | None = setting(None, COMPILE_BACKEND)
    # vitmix.accelerate on the trained model: fused kernels for float32 CPU evaluation, and
    # with lean_training the memory-lean training functions for the MLPs, CCA and linear layers
    # (faster for SCHEMEformer-S12 at 224 in float32, slower at 32x32, under CPU bf16 autocast
    # and for GroupMixFormer: docs/performance.md).
    accelerate: bool = setting(True, BOOL)
    lean_training: bool = setting(False, BOOL)
    # Augmentation and regularisation (timm's). The defaults are the light recipe tuned for
    # short runs on the default data (docs/training.md has the flags for long ImageNet runs).
    auto_augment: str | None = setting(None, AUTO_AUGMENT)
    re_prob: float = setting(0.1, PROBABILITY)
    crop_scale: tuple[float, float] = setting((0.8, 1.0), CROP_SCALE)
    # The random-resized crop's resampling; "random" draws bilinear or bicubic per image.
    train_interpolation: str = setting("bicubic", one_of(*TRAIN_INTERPOLATIONS))
    hflip: float = setting(0.5, PROBABILITY)
    color_jitter: float = setting(0.0, NON_NEGATIVE_NUMBER)
    mixup: float = setting(0.0, NON_NEGATIVE_NUMBER)
    cutmix: float = setting(0.0, NON_NEGATIVE_NUMBER)
    label_smoothing: float = setting(0.1, number_in(0, 1, high_open=True))
    # Validation and test images: the shorter side resized to img_size / eval_crop_pct, the
    # centre img_size kept (timm's crop_pct; 1: the whole image, as small images want).
    eval_crop_pct: float = setting(1.0, FRACTION)
    eval_interpolation: str = setting("bicubic", one_of(*INTERPOLATIONS))
    # Plumbing.
    seed: int = setting(0, int_up_to(MAX_SEED, low=0))
    # Loader worker processes per training process; None: 2 on a CPU (whose cores train), on
    # a GPU the cores the process may use less one, shared by the processes of its machine (at
    # most 16). The workers live for the whole run.
    workers: int | None = setting(None, optional(int_up_to(MAX_WORKERS, low=0)))
    # "tensor": Fashion-MNIST augmented as whole batches in the training process; "dataloader":
    # timm's transforms in worker processes; "auto": tensor where it can do what is asked.
    loader: str = setting("auto", one_of(*LOADERS))
    device: str = setting("auto", one_of(*DEVICES))  # auto: cuda when available
    # BatchNorm statistics synchronised across the processes of a DDP run (CUDA only). Off, as
    # the GroupMixFormer authors train; the MetaFormers have no BatchNorm.
    sync_bn: bool = setting(False, BOOL)
    # CUDA: TF32 matrix products and convolutions, and cuDNN's autotuner (train/cuda_math.py).
    tf32: bool = setting(True, BOOL)
    cudnn_benchmark: bool = setting(True, BOOL)
    # Updates between progress reports: a line in a log (a bar's numbers on a terminal), and
    # the check for a non-finite loss, whose value reaching the host would stall a GPU.
    log_interval: int = setting(50, int_up_to(MAX_COUNT))
    # Torch intra-op threads per process (None: torch's default).
    threads: int | None = setting(None, optional(int_up_to(MAX_THREADS)))
    eval_ema_each_epoch: bool = setting(True, BOOL)
    # Per epoch: short runs for smoke tests.
    max_train_batches: int | None = setting(None, optional(int_up_to(MAX_COUNT)))
    max_val_batches: int | None = setting(None, optional(int_up_to(MAX_COUNT)))
    # ImageFolder: "decode" every image once, check its "header" only, or "none" up front (all
    # sources find damaged images while loading); "auto" decodes up to 10,000 images per split.
    verify_images: str = setting("auto", one_of(*VERIFY_MODES))
    progress_bar: bool = setting(True, BOOL)
    # The shipped recipe the run started from (`vitmix recipes`), kept as a record: the
    # command line applies it (--recipe, or this key in a --config file), TrainConfig does not.
    recipe: str | None = setting(None, optional(TEXT))

    def __post_init__(self) -> None:
        if isinstance(self.crop_scale, list):
            self.crop_scale = tuple(self.crop_scale)
        self.validate()

    def validate(self) -> None:
        """One line for the first value that breaks its field's rule or another field's."""
        for f in dataclasses.fields(self):
            f.metadata["rule"].check(f.name, getattr(self, f.name))
        self._check_model_kwargs()
        if self.batch_size % 2 and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError(f"Mixup/CutMix pair images, so batch_size must be even, "
                             f"got {self.batch_size}")
        if self.loader == "auto":
            self.loader = ("tensor" if self.data == "fashion-mnist" and not self.auto_augment
                           and not self.color_jitter and self.train_interpolation == "bicubic"
                           else "dataloader")
        if self.loader == "tensor" and self.auto_augment:
            raise ValueError(f"the tensor loader has no RandAugment; pass auto_augment=None "
                             f"(--auto-augment none) with it, got {self.auto_augment!r}")
        if self.loader == "tensor" and self.color_jitter:
            raise ValueError(f"the tensor loader has no colour jitter; pass color_jitter=0 "
                             f"(--color-jitter 0) with it, got {self.color_jitter}")
        if self.loader == "tensor" and self.train_interpolation != "bicubic":
            raise ValueError(f"the tensor loader resamples its crops bicubically; pass "
                             f"train_interpolation='bicubic' (--train-interpolation bicubic) with "
                             f"it, got {self.train_interpolation!r}")
        if self.lean_training and not self.accelerate:
            raise ValueError("lean_training runs vitmix.accelerate's functions, so it needs "
                             "accelerate=True (drop --no-accelerate or --lean-training)")
        if self.final_weights == "ema" and not self.ema:
            self.final_weights = "model"
        # With a budget the epochs are what fits; the warm-up is capped at half the run there.
        if self.time_budget is None and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs={self.epochs}], "
                             f"got {self.warmup_epochs}")
        self._check_schedule()
        if self.init_from is not None and self.schemify is None:
            raise ValueError(f"init_from copies a dense model's weights into a SCHEME form, so "
                             f"it needs schemify (e.g. {{\"groups\": 2}}), got init_from="
                             f"{self.init_from!r} and schemify=None")
        if self.data_dir is not None and self.data != "fashion-mnist":
            raise ValueError(f"data_dir names the folder of the Fashion-MNIST files; it goes "
                             f"with data='fashion-mnist', got data={self.data!r}")
        for name in ("data_image_key", "data_label_key"):
            if getattr(self, name) is not None and self.data == "fashion-mnist":
                raise ValueError(f"{name} names the image or label of a Hugging Face dataset or "
                                 f"of webdataset samples; Fashion-MNIST has no other")

    def _check_model_kwargs(self) -> None:
        """The model arguments: each one of the allowlist of vitmix.model_arguments (the run
        writes them to config.yaml, which a resumed run reads back like any file), and no image
        size or channel count other than the run's. A num_classes is checked against the data's
        class count once the data is read (train/engine.py's model_kwargs_for)."""
        check_model_kwargs(self.model_kwargs, "model_kwargs (--model-kwargs)")
        for name in ("img_size", "in_chans"):
            # A model built for other images than the transforms make fails at its first
            # forward, after the data is read, or trains on what it was not built for (a
            # position embedding quietly resized).
            if name not in self.model_kwargs:
                continue
            given, own = self.model_kwargs[name], getattr(self, name)
            if name == "img_size" and isinstance(given, (list, tuple)) and len(set(given)) == 1:
                given = given[0]  # [32, 32] is 32
            if given != own:
                raise ValueError(f"model_kwargs sets {name}={quoted(given)}, but the run's {name} "
                                 f"is {own} (--{name.replace('_', '-')}), the images it makes; "
                                 f"set {name} there alone")

    def _check_schedule(self) -> None:
        """The schedule's settings that only make sense together."""
        if self.time_budget is not None and self.sched_on == "epoch":
            raise ValueError("a time_budget plans the run in updates and re-plans as it goes; "
                             "its schedule needs sched_on='update' (--sched-on update), got "
                             "sched_on='epoch'")
        if self.time_budget is not None and self.cooldown_epochs:
            raise ValueError(f"with a time_budget the epochs are what fits, so there are none "
                             f"to add after the cosine; pass cooldown_epochs=0 "
                             f"(--cooldown-epochs 0), got {self.cooldown_epochs}")
        if self.sched_on == "epoch" and (self.warmup_epochs != int(self.warmup_epochs)
                                         or self.warmup_epochs >= self.epochs):
            raise ValueError(f"with sched_on='epoch' the rate changes once per epoch, so "
                             f"warmup_epochs must be a whole number below epochs={self.epochs}, "
                             f"got {self.warmup_epochs}")

    @property
    def run_epochs(self) -> int:
        """The epochs a run without a time budget trains: the cosine's, then the cooldown."""
        return self.epochs + self.cooldown_epochs

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["crop_scale"] = list(self.crop_scale)
        return out

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        cls.check_keys(values)
        return cls(**values)

    @classmethod
    def check_keys(cls, values: dict) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known, key=str)  # YAML keys may be numbers too
        if unknown:
            raise ValueError(f"unknown config keys {quoted(unknown)}; known keys: "
                             f"{sorted(known)}")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(cls.read_values(path))

    @classmethod
    def read_values(cls, path: str | Path) -> dict:
        """The keys a YAML config file sets, and only those (the command line lays them over a
        recipe); an unknown key, a file that is no YAML mapping or is missing: one line."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config file {path} is a folder; give a YAML file")
        check_input_file(path, "config file")
        try:
            values = load_yaml(read_bounded_text(path, "config file"), f"config file {path}",
                               _ConfigLoader)
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            problem = abbreviate(str(err).replace("\n", " "), MAX_YAML_PROBLEM_CHARS)
            raise ValueError(f"{path} is not valid YAML: {problem}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got "
                             f"{type(values).__name__}")
        cls.check_keys(values)
        if "model_kwargs" in values:  # naming the file, before the values are merged
            check_model_kwargs(values["model_kwargs"], f"config file {path}")
        return values


class _ConfigLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 as a string (its floats need a dot); a learning rate written so is
    a number to anyone who writes it, so floats follow YAML 1.2 here."""


# Only what YAML 1.1 misses, an exponent without a dot or without a sign (1e-3, 2.5e4):
# its own resolvers come first and keep 1 an int and 1.5 a float.
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
