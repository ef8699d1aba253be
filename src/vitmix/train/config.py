"""Everything a training run needs, as one dataclass that round-trips through config.yaml."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["TrainConfig"]

AMP_MODES = ("auto", "off", "bf16", "fp16")
LOADERS = ("dataloader", "tensor")
FINAL_WEIGHTS = ("ema", "model")


@dataclass
class TrainConfig:
    # What to train on what.
    model: str = "schemeformer_ppaa_t_e8_g4"
    model_kwargs: dict = field(default_factory=dict)  # extra timm.create_model arguments
    data: str = "fashion-mnist"  # or a folder holding train/ and val/
    img_size: int = 32
    in_chans: int = 1
    out_dir: str = "runs/train"
    # Optimisation; lr = base_lr * (batch_size * accum_steps * world_size) / 1024.
    epochs: int = 10
    batch_size: int = 128
    accum_steps: int = 1
    base_lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    clip_grad: float | None = 5.0
    drop_path: float = 0.1
    ema: bool = True
    ema_decay: float = 0.999
    # Ramp the EMA decay up from 0 (timm's 1 - (1 + step)^(-2/3), capped at ema_decay), so that
    # in a short run neither the random initial weights nor the initial BatchNorm statistics
    # (running variance 1) linger in the average: at decay 0.999 a 12-epoch Fashion-MNIST run
    # kept 6% of them and its EMA model scored 44% against 91.7% for the raw weights.
    ema_warmup: bool = True
    final_weights: str = "ema"  # which weights the final evaluation and deployed model use
    amp: str = "auto"  # auto: bf16 (or fp16) on CUDA, off on CPU
    channels_last: bool = True  # NHWC memory: much faster for convs and SchemeMlp on CPU
    compile: str | None = None  # a torch.compile backend ("inductor") for the training forward
    # vitmix.accelerate on the trained model: memory-lean training functions for the MLPs, CCA
    # and linear layers in eager mode, fused kernels for float32 CPU evaluation.
    accelerate: bool = True
    # Augmentation and regularisation (timm's).
    auto_augment: str | None = "rand-m6-mstd0.5-inc1"
    re_prob: float = 0.25
    crop_scale: tuple[float, float] = (0.6, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.4  # timm's default; about half the loading time of small images
    mixup: float = 0.2
    cutmix: float = 0.0
    label_smoothing: float = 0.1
    # Plumbing.
    seed: int = 0
    workers: int = 2
    loader: str = "dataloader"  # or "tensor": Fashion-MNIST augmented as whole batches
    device: str = "auto"  # auto: cuda when available
    threads: int | None = None  # torch intra-op threads per process (None: torch's default)
    eval_ema_each_epoch: bool = True
    max_train_batches: int | None = None  # per epoch: short runs for smoke tests
    max_val_batches: int | None = None
    verify_images: str = "decode"  # ImageFolder: "decode" every image once, or "header" only
    progress_bar: bool = True

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)
        self.validate()

    def validate(self) -> None:
        def positive(name: str, value) -> None:
            if value is None or value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")

        for name in ("epochs", "batch_size", "accum_steps", "base_lr", "img_size"):
            positive(name, getattr(self, name))
        if self.batch_size % 2 and (self.mixup > 0 or self.cutmix > 0):
            raise ValueError(f"Mixup/CutMix pair images, so batch_size must be even, "
                             f"got {self.batch_size}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.loader == "tensor" and self.auto_augment:
            raise ValueError(f"the tensor loader has no RandAugment; pass auto_augment=None "
                             f"(--auto-augment none) with it, got {self.auto_augment!r}")
        if self.loader == "tensor" and self.color_jitter:
            raise ValueError(f"the tensor loader has no colour jitter; pass color_jitter=0 "
                             f"(--color-jitter 0) with it, got {self.color_jitter}")
        if self.final_weights not in FINAL_WEIGHTS:
            raise ValueError(f"final_weights must be one of {FINAL_WEIGHTS}, "
                             f"got {self.final_weights!r}")
        if self.final_weights == "ema" and not self.ema:
            self.final_weights = "model"
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs={self.epochs}], "
                             f"got {self.warmup_epochs}")
        for name in ("mixup", "cutmix", "label_smoothing", "re_prob", "drop_path",
                     "weight_decay", "min_lr", "hflip", "color_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, "
                             f"got {self.crop_scale}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError(f"clip_grad must be positive or None, got {self.clip_grad}")
        if self.compile is not None:
            import torch

            backends = torch.compiler.list_backends(exclude_tags=())
            if self.compile not in backends:
                raise ValueError(f"compile must be a torch.compile backend, one of {backends}, "
                                 f"got {self.compile!r}")
        for name in ("max_train_batches", "max_val_batches", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["crop_scale"] = list(self.crop_scale)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(values)}")
        return cls.from_dict(values)
