"""Hostile and out-of-range input meets a bound of vitmix.limits before any work: each test
builds its own input (nested JSON, a YAML alias bomb, an image size in the millions, a label of
10**12, a PNG header declaring 100,000 x 100,000 pixels, a seed past 64 bits, a device file) and
checks for one line of bounded length naming the value and the bound, or, for an image, a
skipped and counted sample."""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny_runs import make_image_tree
from vitmix import cli, limits
from vitmix.data.image_folder import SafeImageFolder
from vitmix.structured_text import json_depth, load_json, load_yaml
from vitmix.train import TrainConfig
from vitmix.train.evaluation_job import check_class_count

NESTED_JSON = '{"a": ' + "[" * 10_000 + "]" * 10_000 + "}"
# Nine aliases of nine aliases ... seven levels: 9**7 = 4.8 million strings once expanded.
ALIAS_BOMB = "epochs:\n  - &a [" + ", ".join(['"lol"'] * 9) + "]\n" + "".join(
    f"  - &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    assert len(lines[-1]) < limits.MAX_MESSAGE_CHARS + 100, len(lines[-1])
    assert "Traceback" not in err
    return lines[-1]


def train_fails(capsys, tmp_path, *args) -> str:
    """`vitmix train ARGS` refused with exit code 2 (argparse's or vitmix's), nothing made."""
    out = tmp_path / "run"
    try:
        code = cli.main(["train", "--out", str(out), *args])
    except SystemExit as exit_info:  # argparse refuses its own arguments so
        code = exit_info.code
    assert code == 2
    assert not out.exists()
    return one_error_line(capsys)


# --- JSON and YAML ---

def test_nested_model_kwargs_are_one_argparse_line(capsys, tmp_path):
    line = train_fails(capsys, tmp_path, "--model-kwargs", NESTED_JSON)
    assert line == (f"vitmix train: error: argument --model-kwargs: the JSON nests more than "
                    f"{limits.MAX_NESTING_DEPTH} levels deep; settings nest a few")


def test_json_depth_counts_brackets_outside_strings():
    assert json_depth('{"a": "[[[[{{", "b": [[1], {"c": "\\"["}]}') == 3
    assert json_depth("1") == 0
    nested = "[" * limits.MAX_NESTING_DEPTH + "]" * limits.MAX_NESTING_DEPTH
    assert load_json(nested, "x") == eval(nested)  # at the bound: read
    with pytest.raises(ValueError, match="^x nests more than 32 levels deep"):
        load_json("[" + nested + "]", "x")
    with pytest.raises(ValueError, match="^x is 1,048,578 characters long, more than the "
                                         "1,048,576 allowed$"):
        load_json('"' + "a" * limits.MAX_STRUCTURED_TEXT_BYTES + '"', "x")


def test_a_deep_or_huge_model_kwargs_value_is_quoted_short(capsys, tmp_path):
    line = train_fails(capsys, tmp_path, "--model-kwargs", "[" + "1, " * 100_000 + "1]")
    assert "must be a JSON object such as" in line
    assert line.endswith("1, 1, ...") and len(line) < 250


@pytest.mark.parametrize("text,message", [
    ("model_kwargs: " + "[" * 10_000 + "]" * 10_000 + "\n", "nests more than 32 levels deep"),
    ("model_kwargs:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)) + "  " * 60
     + "v: 1\n", "nests more than 32 levels deep"),
    (ALIAS_BOMB, "holds more than 100,000 values once its aliases are expanded"),
    ("a: &x [[[[1]]]]\nmodel_kwargs: " + "[" * 30 + "*x" + "]" * 30 + "\n",
     "nests more than 32 levels deep"),
    ("model_kwargs: &m {a: *m}\n", r"holds a value that contains itself \(the alias \*m inside "
                                   r"&m\)"),
])
def test_a_yaml_config_within_bounds_or_one_line(capsys, tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    line = train_fails(capsys, tmp_path, "--config", str(config))
    assert line.startswith(f"vitmix train: error: config file {config} ")
    assert __import__("re").search(message, line), line


def test_yaml_aliases_within_the_bound_are_read():
    text = "a: &x [1, 2]\nb: [*x, *x]\n"
    assert load_yaml(text, "c") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_a_config_file_is_read_only_up_to_its_bound(capsys, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * limits.MAX_STRUCTURED_TEXT_BYTES + "\nepochs: 1\n")
    line = train_fails(capsys, tmp_path, "--config", str(big))
    assert line == (f"vitmix train: error: config file {big} is larger than 1,048,576 bytes, "
                    f"the most vitmix reads of such a file")


# --- Sizes, classes and integer settings ---

INTEGER_BOUNDS = [
    ("img_size", limits.MAX_IMG_SIZE, "a positive integer"),
    ("epochs", limits.MAX_EPOCHS, "a positive integer"),
    ("cooldown_epochs", limits.MAX_EPOCHS, "a non-negative integer"),
    ("batch_size", limits.MAX_BATCH_SIZE, "a positive integer"),
    ("accum_steps", limits.MAX_ACCUM_STEPS, "a positive integer"),
    ("lr_base_size", limits.MAX_BATCH_SIZE, "a positive integer"),
    ("seed", limits.MAX_SEED, "a non-negative integer"),
    ("workers", limits.MAX_WORKERS, "a non-negative integer"),
    ("log_interval", limits.MAX_COUNT, "a positive integer"),
    ("threads", limits.MAX_THREADS, "a positive integer"),
    ("max_train_batches", limits.MAX_COUNT, "a positive integer"),
    ("max_val_batches", limits.MAX_COUNT, "a positive integer"),
    ("val_split", limits.MAX_COUNT, "'auto', a non-negative integer"),
]


def test_every_integer_field_has_a_bound_here():
    import dataclasses
    import typing

    hints = typing.get_type_hints(TrainConfig)
    integer_fields = {f.name for f in dataclasses.fields(TrainConfig)
                      if int in typing.get_args(hints[f.name]) or hints[f.name] is int}
    assert integer_fields - {"in_chans"} == {name for name, _, _ in INTEGER_BOUNDS}


@pytest.mark.parametrize("name,bound,kind", INTEGER_BOUNDS, ids=[n for n, _, _ in INTEGER_BOUNDS])
def test_an_integer_past_its_bound_names_the_field_and_the_range(name, bound, kind):
    TrainConfig(**{name: bound})  # the bound itself is allowed
    with pytest.raises(ValueError, match=f"^{name} must be {kind} up to {bound}.*, got "
                                         f"{2**70}$"):
        TrainConfig(**{name: 2**70})


def test_an_integer_past_64_bits_in_yaml_is_refused_before_the_data_is_read(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"seed: {2**70}\ndata: {tmp_path / 'nowhere'}\n")
    line = train_fails(capsys, tmp_path, "--config", str(config))
    assert line == (f"vitmix train: error: seed must be a non-negative integer up to "
                    f"{limits.MAX_SEED}, got {2**70}")


def test_an_integer_of_thousands_of_digits_is_quoted_short(capsys, tmp_path):
    line = train_fails(capsys, tmp_path, "--epochs", "9" * 5000)
    assert line.endswith("invalid int value: '" + "9" * limits.MAX_QUOTED_CHARS + "...'")


def test_image_size_and_class_count_in_the_millions_are_refused_before_any_work(capsys,
                                                                                 tmp_path):
    line = train_fails(capsys, tmp_path, "--img-size", "10000000", "--data",
                       str(tmp_path / "nowhere"))
    assert line == ("vitmix train: error: img_size must be a positive integer up to 4096, got "
                    "10000000")
    line = train_fails(capsys, tmp_path, "--model-kwargs", '{"num_classes": 100000000}')
    assert line == ("vitmix train: error: model_kwargs (--model-kwargs): the model argument "
                    "num_classes must be an integer from 0 to 100000, got 100000000")
    line = train_fails(capsys, tmp_path, "--img-size", "32", "--model-kwargs",
                       '{"img_size": 64}')
    assert line == ("vitmix train: error: model_kwargs sets img_size=64, but the run's img_size "
                    "is 32 (--img-size), the images it makes; set img_size there alone")


@pytest.mark.parametrize("args,message", [
    (["eval", "--model", "metaformer_ppaa_t", "--checkpoint", "x.pth", "--img-size", "10000000"],
     "img_size (--img-size) must be a positive integer up to 4096, got 10000000"),
    (["export", "m.onnx", "--format", "onnx", "--model", "metaformer_ppaa_t", "--in-chans",
      str(2**70)], f"--in-chans must be a positive integer up to 1024, got {2**70}"),
    (["bench", "--models", "metaformer_ppaa_t", "--batch-size", "1", str(2**70)],
     f"--batch-size must be a positive integer up to 1048576, got {2**70}"),
    (["list", "--img-size", "10000000"],
     "--img-size must be a positive integer up to 4096, got 10000000"),
])
def test_the_other_commands_bound_their_integers(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, here
    assert cli.main(args) == 2
    assert one_error_line(capsys) == f"vitmix {args[0]}: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_a_class_count_unlike_the_datas_names_the_side_at_fault(capsys, tmp_path):
    tree = make_image_tree(tmp_path / "shapes", {"train": 2, "val": 1})
    line = train_fails(capsys, tmp_path, "--data", str(tree), "--img-size", "32", "--workers",
                       "0", "--model", "metaformer_ppaa_t", "--model-kwargs",
                       '{"num_classes": 2}')
    assert line == (f"vitmix train: error: model_kwargs sets num_classes=2, but the training "
                    f"data {tree} has 3 classes; drop num_classes from model_kwargs "
                    f"(--model-kwargs): a run takes it from its data")
    # vitmix eval: a checkpoint that names its classes labels the data by them.
    with pytest.raises(ValueError, match=r"^checkpoint c.pth is damaged: its model classifies 5 "
                                         r"classes, but it names 3$"):
        check_class_count(Path("c.pth"), 5, ["a", "b", "c"], "shapes", 3)
    with pytest.raises(ValueError, match="^checkpoint c.pth classifies 5 classes, but the "
                                         "evaluation data shapes has 3$"):
        check_class_count(Path("c.pth"), 5, None, "shapes", 3)


# --- Data: labels and images ---

def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels, in a hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path: Path, samples: list[tuple[bytes, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, (png, label) in enumerate(samples):
            for ext, data in (("png", png), ("cls", label)):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_shard_label_of_10_to_the_12_does_not_size_the_classifier(tmp_path):
    pytest.importorskip("webdataset")
    from vitmix.data.shards import load_shard_splits

    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}-0000.tar", [(small_png(), b"0"),
                                                     (small_png(), str(10**12).encode())])
    with pytest.raises(ValueError, match=rf"^the train shards of {tmp_path}: the label "
                                         rf"1000000000000 is past the bound of 100,000 classes "
                                         rf"\(labels 0 to 99999\)"):
        load_shard_splits(tmp_path, ("train", "val"), "L", {})


def test_shard_lengths_in_an_info_file_are_bounded(tmp_path):
    pytest.importorskip("webdataset")
    import json

    from vitmix.data.shards import load_shard_splits

    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}-0000.tar", [(small_png(), b"0")])
    info = {"splits": {split: {"filenames": [f"{split}-0000.tar"], "shard_lengths": [10**12]}
                       for split in ("train", "val")}}
    (tmp_path / "_info.json").write_text(json.dumps(info))
    (tmp_path / "classes.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"^the train shards of .* hold 1,000,000,000,000 "
                                         r"samples by .*_info.json, more than the "
                                         r"1,000,000,000 vitmix reads$"):
        load_shard_splits(tmp_path, ("train", "val"), "L", {})
    (tmp_path / "_info.json").write_text('{"splits": ' * 100 + "}" * 100)
    with pytest.raises(ValueError, match="_info.json nests more than 32 levels deep"):
        load_shard_splits(tmp_path, ("train", "val"), "L", {})


def test_a_saved_dataset_label_of_10_to_the_12_does_not_size_the_classifier(tmp_path):
    datasets = pytest.importorskip("datasets")
    from vitmix.data.hf_saved import load_saved_splits

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"image": [{"bytes": small_png(), "path": None}] * 2, "label": [0, 10**12]}
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)
                          for split in ("train", "validation")}).save_to_disk(str(tmp_path))
    with pytest.raises(ValueError, match=rf"^split 'train' of {tmp_path}: the label "
                                         rf"1000000000000 is past the bound of 100,000 classes"):
        load_saved_splits(tmp_path, ("train", "val"), "L", {})


@pytest.mark.parametrize("verify", ["decode", "header"])
def test_a_decompression_bomb_in_a_folder_is_a_skipped_and_counted_image(tmp_path, verify):
    root = make_image_tree(tmp_path / "tree", {"train": 2})
    (root / "train" / "circle" / "bomb.png").write_bytes(png_header(100_000, 100_000))
    (root / "train" / "square" / "big.png").write_bytes(png_header(9_000, 9_000))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        folder = SafeImageFolder(root / "train", mode="L", verify=verify)
    assert len(folder) == 6 and folder.skipped == 2


def test_a_decompression_bomb_met_while_loading_is_replaced_and_counted(tmp_path):
    root = make_image_tree(tmp_path / "tree", {"train": 1})
    (root / "train" / "circle" / "bomb.png").write_bytes(png_header(100_000, 100_000))
    folder = SafeImageFolder(root / "train", mode="L", verify="none")
    position = [p.name for p, _ in folder.samples].index("bomb.png")
    with pytest.warns(UserWarning, match=r"bomb.png \(more pixels than the 67,108,864 an image "
                                         r"may have"):
        image, _ = folder[position]
    assert image.size == (28, 28) and folder.skipped_at_load == 1


def test_a_decompression_bomb_in_a_shard_is_left_out_and_counted(tmp_path):
    pytest.importorskip("webdataset")
    from vitmix.data.shards import load_shard_splits

    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}-0000.tar", [(small_png(), b"0"),
                                                     (png_header(100_000, 100_000), b"1"),
                                                     (small_png(), b"1")])
    streams, _ = load_shard_splits(tmp_path, ("train", "val"), "L", {})
    with pytest.warns(UserWarning, match="100000 x 100000 pixels|more pixels than"):
        read = list(streams["val"])
    assert len(read) == 2 and streams["val"].skipped == 1


# --- Device files and paths ---

@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_a_device_file_is_named_as_what_it_is(capsys, tmp_path):
    line = train_fails(capsys, tmp_path, "--config", "/dev/null")
    assert line == "vitmix train: error: config file /dev/null is a character device, not a file"
    assert cli.main(["eval", "--model", "metaformer_ppaa_t", "--checkpoint", "/dev/null"]) == 2
    assert one_error_line(capsys) == ("vitmix eval: error: checkpoint /dev/null is a character "
                                      "device, not a file")
    assert cli.main(["train", "--out", "/dev/null"]) == 2
    assert one_error_line(capsys) == ("vitmix train: error: the run folder (--out) /dev/null is "
                                      "a character device; give a folder")
    assert cli.main(["train", "--resume", "/dev/null"]) == 2
    assert one_error_line(capsys) == ("vitmix train: error: cannot resume: /dev/null is a "
                                      "character device, not a run folder")
