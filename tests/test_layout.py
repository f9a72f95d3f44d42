"""The layout is the architecture: one subpackage per concept, imports flowing one way, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import freezetune

ROOT = Path(freezetune.__file__).parent
# lower layers never import higher ones (a layer may import itself and anything below)
# config is the library's run configuration; options is the CLI's schema over it, above the engine
LAYERS = [{"errors"}, {"models", "plans", "data"}, {"config"}, {"runs"}, {"distributed"}, {"training"}, {"options"},
          {"comparison", "hf", "advice"}, {"cli"}]
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
        elif not top_only and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"freezetune(\.\w+)+", node.value) and node.value.split(".")[1] in set().union(*LAYERS):
            out.add(node.value.removeprefix("freezetune."))  # a process started with `python -m freezetune.x.y`
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


def test_a_started_process_counts_as_an_import(tmp_path):
    source = tmp_path / "runner.py"
    source.write_text('import subprocess\nsubprocess.Popen(["python", "-m", "freezetune.cli.commands"])\n')
    assert imports(source, top_only=False) == {"cli.commands"}


def test_the_engine_knows_nothing_of_the_command_line():
    for name, path in modules().items():
        if name.split(".")[0] in ("training", "runs", "distributed", "config", "data", "plans", "models"):
            assert not {t for t in imports(path, top_only=False) if t.split(".")[0] in ("options", "cli")}, name
