"""What `--help` says an option defaults to is what the code uses when the option is not given:
each "(default: X)" is compared with the default itself, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from vitmix import cli
from vitmix.checkpoints.io import DEFAULT_IMG_SIZE, DEFAULT_IN_CHANS, load_model
from vitmix.commands.train import declared_default
from vitmix.data.fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_ENV
from vitmix.data.image_folder import AUTO_DECODE_LIMIT
from vitmix.data.split import FASHION_MNIST_VAL_SPLIT, resolve_val_split
from vitmix.train import TrainConfig

DEFAULT = re.compile(r"\(default: ([^)]*)\)")


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def shown_defaults(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{dest: the text after "(default: " in its help}, as --help prints it (with argparse's
    %(default)s filled in)."""
    formatter = parser._get_formatter()
    shown = {}
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            found = DEFAULT.search(formatter._expand_help(action))
            if found:
                shown[action.dest] = found.group(1)
    return shown


def test_train_help_shows_each_fields_declared_default():
    parser = subcommand_parsers()["train"]
    shown = shown_defaults(parser)
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in actions or f.name in ("workers", "data_dir", "data_image_key",
                                               "data_label_key"):
            continue  # not a flag here; or a text saying what None becomes (below)
        action, default = actions[f.name], declared_default(f)
        assert f.name in shown, f"--help of {f.name} shows no default"
        text = shown[f.name]
        if isinstance(action, argparse.BooleanOptionalAction):
            assert text == str(default), f.name
        elif action.nargs == 2:
            assert tuple(action.type(v) for v in text.split()) == default, f.name
        else:
            assert (action.type or str)(text) == default, (f.name, text, default)
    # Not what a config resolves it to: the tensor loader is picked for Fashion-MNIST only.
    assert shown["loader"] == "auto" and TrainConfig().loader == "tensor"


def test_texts_that_describe_a_default_name_the_codes_values():
    import torch

    from vitmix.train.engine import loader_workers

    shown = shown_defaults(subcommand_parsers()["train"])
    cpu = loader_workers(None, torch.device("cpu"))
    assert shown["workers"].startswith(f"{cpu} on a CPU")
    assert shown["data_dir"] == f"${FASHION_MNIST_ENV}, else {FASHION_MNIST_DIR}"
    helps = {a.dest: a.help for a in subcommand_parsers()["train"]._actions}
    assert f"up to {AUTO_DECODE_LIMIT:,} images" in helps["verify_images"]
    assert resolve_val_split("auto", "fashion-mnist") == FASHION_MNIST_VAL_SPLIT
    assert f"auto = {FASHION_MNIST_VAL_SPLIT} for fashion-mnist" in helps["val_split"]


@pytest.mark.parametrize("command", ["eval", "export", "bench", "import-weights", "list"])
def test_every_other_shown_default_is_the_options_default(command):
    parser = subcommand_parsers()[command]
    shown = shown_defaults(parser)
    for action in parser._actions:
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or action.dest == "help":
            continue  # nothing to show: an option off, empty, or resolved as its text says
        assert action.dest in shown, f"vitmix {command} --help shows no default for {action.dest}"
        # The value as it would be typed, before any words that follow it ("none, float32").
        assert shown[action.dest].split(",")[0] == as_typed(default), (action.dest, shown)


def as_typed(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_the_fallback_input_size_in_help_is_the_one_models_are_built_with():
    _, kwargs = load_model("metaformer_ppaa_t")
    assert (kwargs["img_size"], kwargs["in_chans"]) == (DEFAULT_IMG_SIZE, DEFAULT_IN_CHANS)
    for command in ("eval", "export"):
        shown = shown_defaults(subcommand_parsers()[command])
        assert shown["img_size"].endswith(f"else {DEFAULT_IMG_SIZE}")
        assert shown["in_chans"].endswith(f"else {DEFAULT_IN_CHANS}")
