"""The layout is the architecture: one subpackage per concept, imports flowing one way, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import freezetune

ROOT = Path(freezetune.__file__).parent
# lower layers never import higher ones (a layer may import itself and anything below)
LAYERS = [{"errors"}, {"models", "plans", "data"}, {"options"}, {"runs"}, {"distributed"}, {"training"},
          {"comparison", "hf"}, {"cli"}]
TOP_LEVEL = {"__init__", "__main__", "errors"}


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return found


def imports(path: Path, top_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("freezetune."):
            out.add(node.module.removeprefix("freezetune."))
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("freezetune.") for a in node.names if a.name.startswith("freezetune.")}
    return out


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if module.split(".")[0] in names)


def test_every_module_sits_in_a_concept_subpackage_and_is_small():
    for name, path in modules().items():
        assert "." in name or name in TOP_LEVEL or path.name == "__init__.py", f"{name} is not in a subpackage"
        assert len(path.read_text().splitlines()) <= 300, f"{path} has more than 300 lines"


def test_imports_flow_one_way():
    for name, path in modules().items():
        if name in ("__init__", "__main__"):
            continue
        for target in imports(path, top_only=False):
            assert layer(target) <= layer(name), f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"


def test_no_import_cycles():
    graph = {name: imports(path, top_only=True) & set(modules()) for name, path in modules().items()}
    done, active = set(), []

    def visit(node):
        assert node not in active, "import cycle: " + " -> ".join(active[active.index(node):] + [node])
        if node in done:
            return
        active.append(node)
        for target in graph.get(node, ()):
            visit(target)
        active.pop()
        done.add(node)

    for node in graph:
        visit(node)
