"""`vitmix list` and the package's timm registration."""

import subprocess
import sys

import pytest
import timm

from vitmix.bench.model_table import describe_model, markdown_table, vitmix_model_names
from vitmix.cli import main


def test_import_registers_models_with_timm():
    code = ("import timm; before = len(timm.list_models('schemeformer_*')); import vitmix; "
            "print(before, len(timm.list_models('schemeformer_*')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before == 0 and after >= 20


def test_names_are_naturally_ordered():
    names = vitmix_model_names("schemeformer_ppaa_s12_*")
    assert names == [f"schemeformer_ppaa_s12_e{e}_g{g}{suffix}" for e, g, suffix in (
        (4, 2, ""), (8, 2, ""), (8, 4, ""), (8, 4, "_shuffle"), (8, 8, ""), (16, 8, ""))]


def test_table_rows_match_the_model():
    row = describe_model("schemeformer_ppaa_t_e8_g4", img_size=64)
    model = timm.create_model("schemeformer_ppaa_t_e8_g4")
    assert row.params == sum(p.numel() for p in model.parameters())
    assert (row.expansion, row.groups) == (8, 4)
    table = markdown_table([row, describe_model("metaformer_ppaa_t", img_size=64)])
    assert "| schemeformer_ppaa_t_e8_g4 | 2.28 |" in table
    assert "| metaformer_ppaa_t | 3.11 |" in table


def test_list_command_prints_table(capsys):
    assert main(["list", "*_t_e8_g8", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "schemeformer_ppaa_t_e8_g8" in out and "| 8 | 8 |" in out


def test_list_command_unknown_pattern_is_one_clear_error(capsys):
    assert main(["list", "resnet*"]) == 2
    assert "no vitmix model matches 'resnet*'" in capsys.readouterr().err


def test_console_script_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "vitmix", "--help"], capture_output=True,
                         text=True, check=True)
    assert "list" in out.stdout


@pytest.mark.parametrize("argv", [["list", "--img-size", "x"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit):
        main(argv)
