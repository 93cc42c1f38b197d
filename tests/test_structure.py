"""The module structure holds: no import cycle among vstk's modules (imports inside functions
count, imports under ``TYPE_CHECKING`` do not), and no module imports another's private name."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> source folder, as setup.cfg's package_dir maps them (the example plugins too)
PACKAGES = {"vstk": ROOT / "core", "vstk_cyclegan": ROOT / "plugins" / "cyclegan",
            "vstk_qsattn": ROOT / "plugins" / "qsattn", "vstk_nnunet": ROOT / "plugins" / "nnunet",
            "vstk_pseudolabel": ROOT / "plugins" / "pseudolabel"}
for example in (ROOT / "examples").glob("*/vstk_*"):
    if (example / "__init__.py").exists():
        PACKAGES[example.name] = example


def modules() -> dict[str, Path]:
    """Every module of the packages by its dotted name (a package by its ``__init__``)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import in the file, relative ones resolved;
    the body of ``if TYPE_CHECKING:`` is left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, [], child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, [alias.name for alias in child.names], child.lineno))
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for module, names, _ in imports(name, path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
            if len(targets) < len(names) or not names:
                targets.append(module)
            edges[name].update(t for t in targets if t in known and t != name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking_ones():
    edges = graph()
    assert "vstk.pipeline.bench_report" in edges["vstk.pipeline.bench"]  # a top-level import
    assert "vstk.phantom" in edges["vstk.pipeline.plan"]  # imported inside phantom_data
    assert "vstk.pipeline.plan" not in edges["vstk.pipeline.records"]  # only under TYPE_CHECKING


def test_no_import_cycle_among_the_modules():
    found = cycles(graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_imports_a_private_name_of_another():
    known = modules()
    offences = []
    for name, path in known.items():
        for module, names, line in imports(name, path):
            if not module.split(".")[0] in PACKAGES or module == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [part for part in module.split(".") if part.startswith("_") and part != "__init__"]
            if private:
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {module}")
    assert offences == [], "\n".join(offences)
