"""Old import paths of moved names: each still gives the same object, with a DeprecationWarning
naming the new home. Nothing else in the repository uses them (checked from the source)."""

import ast
import functools
import importlib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (old module, old name, new module, new name)
MOVES = [
    *[("vitmix.bench.complexity", name, "vitmix.complexity", name)
      for name in ("attention_flop_formulas", "count_macs", "count_params", "plain_kernels")],
    ("vitmix.bench", "count_macs", "vitmix.complexity", "count_macs"),
    ("vitmix.bench", "count_params", "vitmix.complexity", "count_params"),
    *[("vitmix.convert", name, "vitmix.surgery", name)
      for name in ("DeployReport", "SchemifyReport", "block_assignment", "deploy",
                   "dense_mlp_shape", "schemify")],
    ("vitmix.convert", "from_official", "vitmix.checkpoints.official", "from_official"),
    *[("vitmix.official_weights", name, "vitmix.checkpoints.official", name)
      for name in ("ARCHS", "describe_groupmixformer", "from_official", "unwrap_state_dict")],
    ("vitmix.train.checkpoint", "atomic_save", "vitmix.checkpoints.io", "save_checkpoint"),
    ("vitmix.train.checkpoint", "save_safetensors", "vitmix.checkpoints.io", "save_weights"),
    *[("vitmix.train.checkpoint", name, "vitmix.checkpoints.io", name)
      for name in ("check_state_dict", "load_checkpoint", "load_weights")],
    ("vitmix.train", "build_model", "vitmix.factory", "build_model"),
]
# Modules that are nothing but a shim now: importing them at all is using an old path.
SHIM_MODULES = {"vitmix.bench.complexity", "vitmix.convert", "vitmix.official_weights",
                "vitmix.train.checkpoint"}


@pytest.mark.parametrize("old_module,old_name,new_module,new_name", MOVES)
def test_old_path_warns_and_gives_the_new_object(old_module, old_name, new_module, new_name):
    old = importlib.import_module(old_module)
    message = f"{old_module}.{old_name} is now {new_module}.{new_name}; .* removed in vitmix 0.2"
    with pytest.warns(DeprecationWarning, match=message) as record:
        found = getattr(old, old_name)
    assert found is getattr(importlib.import_module(new_module), new_name)
    assert record[0].filename == __file__  # the warning points at the caller's line


def test_from_import_of_an_old_name_warns_every_time():
    for _ in range(2):
        with pytest.warns(DeprecationWarning, match="vitmix.complexity.count_macs"):
            from vitmix.bench.complexity import count_macs  # noqa: F401


def test_build_deployed_warns_and_loads_the_deployed_model():
    from vitmix.bench import speed
    from vitmix.checkpoints import load_model

    with pytest.warns(DeprecationWarning, match=r"vitmix.bench.speed.build_deployed is now "
                      r"vitmix.checkpoints.load_model\(..., deploy=True\)") as record:
        model, kwargs = speed.build_deployed("metaformer_ppaa_t", 32, in_chans=1)
    assert record[0].filename == __file__
    expected, expected_kwargs = load_model("metaformer_ppaa_t", img_size=32, in_chans=1,
                                           deploy=True)
    assert kwargs == expected_kwargs == {"img_size": 32, "in_chans": 1}
    assert not model.training
    assert model.state_dict().keys() == expected.state_dict().keys()


def test_new_paths_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for _, _, new_module, new_name in MOVES:
            getattr(importlib.import_module(new_module), new_name)


@pytest.mark.parametrize("module", sorted({m for m, *_ in MOVES}))
def test_unknown_names_still_raise_attribute_error(module):
    with pytest.raises(AttributeError, match=f"module '{module}' has no attribute 'nothing'"):
        _ = importlib.import_module(module).nothing


def _absolute(module: str | None, level: int, path: Path, root: Path) -> str:
    """The module a (possibly relative) ``from`` import in ``path`` names."""
    if not level:
        return module or ""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # a package's __init__ is its own package; a module's is its folder
    base = package[:len(package) - level + 1]
    return ".".join(base + ([module] if module else []))


def old_path_uses(path: Path, root: Path = REPO / "src") -> list[str]:
    """'line: dotted name' for every use of an old path in ``path``: imports and attribute
    chains such as vitmix.bench.count_macs."""
    old_names = {f"{m}.{n}" for m, n, *_ in MOVES}
    uses = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, path, root)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute):
            names = [ast.unparse(node)]
        uses += [f"{node.lineno}: {n}" for n in names if n in old_names or n in SHIM_MODULES]
    return uses


def test_nothing_in_the_repository_uses_an_old_path():
    shims = {REPO / "src" / Path(*m.split(".")).with_suffix(".py") for m in SHIM_MODULES}
    files = [p for d in ("src", "tests", "benchmarks") for p in sorted((REPO / d).rglob("*.py"))
             if p not in shims and p != Path(__file__)]
    found = {str(p.relative_to(REPO)): uses for p in files if (uses := old_path_uses(p))}
    assert found == {}


def test_the_scan_finds_old_paths(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import vitmix.bench.complexity\nfrom vitmix.bench import count_macs\n"
                      "import vitmix\nvitmix.bench.count_params\nfrom vitmix.complexity import "
                      "count_macs\n")
    assert old_path_uses(sample) == ["1: vitmix.bench.complexity", "2: vitmix.bench.count_macs",
                                     "4: vitmix.bench.count_params"]
    package = tmp_path / "src" / "vitmix" / "train"
    package.mkdir(parents=True)
    (package / "engine.py").write_text("from ..bench.complexity import count_macs\n"
                                       "from ..complexity import count_params\n")
    (package / "__init__.py").write_text("from ..bench import count_macs\n")
    scan = functools.partial(old_path_uses, root=tmp_path / "src")
    assert scan(package / "engine.py") == ["1: vitmix.bench.complexity",
                                           "1: vitmix.bench.complexity.count_macs"]
    assert scan(package / "__init__.py") == ["1: vitmix.bench.count_macs"]


def test_cli_convert_still_runs_import_weights_with_a_warning_on_stderr(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from test_checkpoints_official import official_state_dict
    from vitmix.cli import main

    src = tmp_path / "gmf_m.pth"
    torch.save({"model": official_state_dict("m")}, src)
    assert main(["import-weights", str(src), str(tmp_path / "new.safetensors")]) == 0
    new = capsys.readouterr()
    # A release carries no checksum of vitmix's tensors: it converts with a note.
    note = (f"note: checkpoint {src} holds no checksum of its tensors (written by an earlier "
            f"vitmix or by another tool); its weights load unverified\n")
    assert new.err == note
    assert main(["convert", str(src), str(tmp_path / "old.safetensors")]) == 0
    old = capsys.readouterr()
    assert old.err == ("vitmix convert: deprecated, use `vitmix import-weights` (same "
                       "arguments); `vitmix convert` will be removed in vitmix 0.2\n" + note)
    assert old.out == new.out.replace("new.safetensors", "old.safetensors")
    want, got = (load_file(tmp_path / n) for n in ("new.safetensors", "old.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # Its errors are the new command's, after the warning.
    assert main(["convert", str(tmp_path / "none.pth"), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("vitmix convert: deprecated")
    assert err[1] == f"vitmix convert: error: checkpoint {tmp_path / 'none.pth'} does not exist"
