"""Print which parts of vitmix import which: one line per package or top-level module.

    python scripts/import_graph.py [SRC_DIR]

A part is a sub-package (layers, train, ...) or a top-level module (surgery, cli, ...); the
package's own __init__ is the part "vitmix". Imports inside functions count too: a lazy import
is still a dependency. Pairs that import each other are listed after the graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = "vitmix"


def part_of(module: str) -> str | None:
    """The part a dotted module name belongs to, or None outside vitmix."""
    names = module.split(".")
    if names[0] != ROOT:
        return None
    return names[1] if len(names) > 1 else ROOT


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str, src: Path) -> bool:
    path = src.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imported_modules(path: Path, src: Path) -> set[str]:
    """Dotted names of the modules ``path`` imports, relative imports resolved."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                # `from . import layers` imports a module; `from .surgery import deploy` a name.
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub, src) else target)
    return found


def import_graph(src: Path) -> dict[str, set[str]]:
    """{part: the other parts it imports}."""
    graph: dict[str, set[str]] = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        here = part_of(module_name(path, src))
        edges = graph.setdefault(here, set())
        for target in imported_modules(path, src):
            there = part_of(target)
            if there is not None and there != here:
                edges.add(there)
    return graph


def mutual_pairs(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if a < b and a in graph.get(b, set()))


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src"
    graph = import_graph(src)
    width = max(map(len, graph))
    for part in sorted(graph):
        print(f"{part:<{width}} -> {', '.join(sorted(graph[part])) or '-'}")
    pairs = mutual_pairs(graph)
    print("import each other: " + (", ".join(f"{a} <-> {b}" for a, b in pairs) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
