"""The package layout's rules, read from the source with scripts/import_graph.py: data flows one
way (no two parts of vitmix import each other), layers know nothing of models, models nothing of
training."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "vitmix" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_resolves_relative_and_lazy_imports(tmp_path):
    src = write_tree(tmp_path, {
        "__init__.py": "from . import layers\nfrom .surgery import deploy\n",
        "layers/__init__.py": "",
        "layers/scheme.py": "import torch\n",
        "surgery.py": "from .layers.scheme import SchemeMlp\n",
        "train/__init__.py": "",
        "train/engine.py": "def f():\n    from ..bench import speed\n",
        "bench/__init__.py": "",
        "bench/speed.py": "from vitmix.train import engine\nfrom .. import surgery\n",
    })
    graph = import_graph.import_graph(src)
    assert graph == {"vitmix": {"layers", "surgery"}, "layers": set(), "surgery": {"layers"},
                     "train": {"bench"}, "bench": {"train", "surgery"}}
    assert import_graph.mutual_pairs(graph) == [("bench", "train")]


def test_the_checker_prints_the_graph_and_the_pairs(tmp_path, capsys):
    src = write_tree(tmp_path, {"__init__.py": "", "a.py": "from . import b\n",
                                "b.py": "from .a import x\n"})
    assert import_graph.main([str(src)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "a      -> b", "b      -> a", "vitmix -> -", "import each other: a <-> b"]


JOBS = {"train", "bench", "commands", "cli", "__main__"}
# What each part must not import: the layers below a part know nothing of the parts above it.
FORBIDDEN = {
    "layers": {"models", "complexity", "surgery", "checkpoints", "factory", "data", *JOBS},
    "models": {"complexity", "surgery", "checkpoints", "factory", "data", *JOBS},
    **{core: JOBS for core in ("complexity", "surgery", "factory", "checkpoints", "data",
                               "export")},
    "bench": {"train", "commands", "cli"},
    "train": {"bench", "commands", "cli"},
}


def test_no_two_parts_of_vitmix_import_each_other():
    assert import_graph.mutual_pairs(import_graph.import_graph(REPO / "src")) == []


def test_no_part_imports_a_part_above_it():
    graph = import_graph.import_graph(REPO / "src")
    assert {part: sorted(graph.get(part, set()) & forbidden)
            for part, forbidden in FORBIDDEN.items()} == dict.fromkeys(FORBIDDEN, [])
