"""The structure the style guide promises, checked on the source itself (no imports are executed):

- no import circles among the project's modules (imports at any level count, function-local ones too);
- no module imports another module's leading-underscore name (`from m import _x`, or `m._x`);
- no file outside tests/ is longer than MAX_LINES unless its docstring says why (a line starting 'Length:');
- no `sys.path` manipulation: the project root is importable through the install and pytest's config.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600
SKIP_DIRS = {".venv", ".git", "__pycache__", "out", "build", "dist", ".pytest_cache", ".hypothesis"}


def source_files(include_tests: bool = True) -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if SKIP_DIRS & set(rel.parts) or any(p.endswith(".egg-info") for p in rel.parts):
            continue
        if not include_tests and rel.parts[0] == "tests":
            continue
        files.append(path)
    return files


def module_name(path: Path) -> str:
    """tests/test_x.py -> tests.test_x; variations/__init__.py -> variations."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in source_files()}
TOP_LEVEL = {name.split(".")[0] for name in MODULES}


def resolve(name: str) -> str | None:
    """The project module an import names (a name inside a module resolves to the module), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every import statement of a file, at any level.
    `from pkg import sub` where pkg.sub is a module counts as an import of pkg.sub."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, _, _ in imports_of(path):
            target = resolve(module) if module.split(".")[0] in TOP_LEVEL else None
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles (break them by moving the shared code into a library module): " + "; ".join(
        " <-> ".join(c) for c in found)


def private_imports(path: Path) -> list[str]:
    """`from m import _x` and `m._x` (m a project module imported by this file) in one file."""
    problems = []
    own = module_name(path)
    aliases = {}
    for module, name, line in imports_of(path):
        target = resolve(module) if module.split(".")[0] in TOP_LEVEL else None
        if target is None or target == own:
            continue
        if name is not None and name.startswith("_") and not name.startswith("__"):
            problems.append(f"{path.relative_to(ROOT)}:{line}: from {module} import {name}")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if resolve(a.name) is not None and a.name.split(".")[0] in TOP_LEVEL:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES:
                    aliases[a.asname or a.name] = sub
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and resolve(aliases[node.value.id]) != own):
            problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return problems


def test_no_module_imports_another_modules_private_names():
    problems = [p for path in source_files() for p in private_imports(path)]
    assert not problems, "private names used across modules (make them public or move them):\n" + "\n".join(problems)


@pytest.mark.parametrize("path", source_files(include_tests=False), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_are_short_or_say_why(path):
    n = len(path.read_text().splitlines())
    if n <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert any(line.startswith("Length:") for line in doc.splitlines()), (
        f"{path.relative_to(ROOT)} has {n} lines (> {MAX_LINES}); split it, or say why in its docstring "
        "on a line starting 'Length:'")


def test_no_sys_path_manipulation():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in source_files() if p != Path(__file__).resolve()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if "sys.path." in line]
    assert not offenders, "sys.path is changed in: " + ", ".join(offenders)


def test_every_top_level_module_is_installed():
    """Scripts import the project through its install (no sys.path edits): every top-level module and
    package of the repository must be listed in pyproject.toml, or `python analysis/x.py` breaks."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["py-modules"]) | set(setup["packages"])
    on_disk = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    on_disk -= {"tests"}
    assert on_disk == listed, f"missing from pyproject: {sorted(on_disk - listed)}; listed but absent: {sorted(listed - on_disk)}"
