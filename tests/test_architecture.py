"""The layers of docs/architecture.md hold in the code: no import points up a layer, no import cycle.

The layer table is read from docs/architecture.md itself, so the page and the code cannot drift apart:
every module of the tree must belong to a package the table lists, every listed package must exist, a
module may import its own package or a package of a lower rank only, and the module import graph,
function-level ("lazy") imports included, has no cycle.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def layer_table() -> dict[str, tuple[int, str]]:
    """package -> (rank, row), from the rows `| rank | `package`[, `package`] | ...` of docs/architecture.md;
    the packages of one row form one unit (they may import each other)."""
    rows = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*((?:`[\w.]+`,?\s*)+)\|", line)
        if m:
            names = re.findall(r"`([\w.]+)`", m.group(2))
            for name in names:
                rows[name] = (int(m.group(1)), names[0])
    return rows


def project_modules() -> dict[str, Path]:
    """module name -> file, through pyproject's package-dir mapping (the namespace users import)."""
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in mapping.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere in its file (module level, functions, TYPE_CHECKING), and
    the modules it names to import later ("p3dmm.x.y" or "p3dmm.x.y:function" strings: the dataset
    registry, the command table), which are imports all the same."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            target = node.value.partition(":")[0]
            if re.fullmatch(r"p3dmm(\.\w+)+", target) and target in modules and target != name:
                found.add(target)
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def owner(module: str, table: dict[str, tuple[int, str]]) -> str | None:
    """The longest listed package that `module` is or lies in."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return ".".join(parts[:n])
    return None


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, tuple[int, str]], dict[str, set[str]]]:
    modules = project_modules()
    return layer_table(), {name: imports_of(name, path, modules) for name, path in modules.items()}


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    return project_modules()


def test_layer_table_covers_the_tree(graph, files):
    table, edges = graph
    assert len(table) >= 10, "docs/architecture.md lost its layer table"
    # a namespace package's __init__ that imports nothing belongs to no layer and can break none
    unlisted = sorted(m for m, deps in edges.items()
                      if owner(m, table) is None and not (files[m].name == "__init__.py" and not deps))
    assert not unlisted, f"modules in no layer of docs/architecture.md: {unlisted}"
    missing = sorted(p for p in table if not any(m == p or m.startswith(p + ".") for m in edges))
    assert not missing, f"docs/architecture.md lists packages that do not exist: {missing}"


def test_no_import_points_up(graph):
    table, edges = graph
    upward = []
    for module, deps in edges.items():
        src_rank, src = table[owner(module, table)]
        for dep in deps:
            dst_rank, dst = table[owner(dep, table)]
            if dst != src and not dst_rank < src_rank:
                upward.append(f"{module} ({src}, layer {src_rank}) imports {dep} ({dst}, layer {dst_rank})")
    assert not upward, "imports that do not point down a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle(graph):
    _, edges = graph
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(edges[module]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_and_a_lazy_cyclic_import(tmp_path):
    """The rules catch what they are for: an import inside a function counts like one at the top."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import p3dmm.b\n")
    b.write_text("def f():\n    from p3dmm import a\n")
    modules = {"p3dmm.a": a, "p3dmm.b": b}
    assert imports_of("p3dmm.a", a, modules) == {"p3dmm.b"}
    assert imports_of("p3dmm.b", b, modules) == {"p3dmm.a"}
    b.write_text('REGISTRY = {"x": "p3dmm.a:write"}\n')
    assert imports_of("p3dmm.b", b, modules) == {"p3dmm.a"}
