"""The layout's rules (README, "Architecture") that code review alone would not keep.

Imports run one way, ``cli -> worker -> webapp -> ml``; nothing imports in a circle; the
web process loads neither TensorFlow, Keras nor the worker's code; only the settings module
reads the environment.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ml", "webapp", "worker", "cli")
TOP_MODULES = ("wsgi",)
# Which of our top-level packages each one may import (itself included).
ALLOWED = {
    "ml": {"ml"},
    "webapp": {"webapp", "ml"},
    "worker": {"worker", "webapp", "ml"},
    "cli": {"cli", "worker", "webapp", "ml"},
    "wsgi": {"cli", "webapp"},
}
# Outside libraries a package must never import.
FORBIDDEN_LIBRARIES = {
    "ml": {"flask", "flask_login", "flask_wtf", "flask_sqlalchemy", "flask_migrate", "celery"},
    "webapp": {"tensorflow", "keras"},
}


def _module_files() -> dict[str, Path]:
    """Every non-test module of the project: dotted name -> file."""
    found = {name: ROOT / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module that ``name`` imports, at module level or inside functions: our own as
    dotted names, outside libraries as their top-level name."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            # ``from package import module`` imports the submodule: an edge to it alone, as
            # import linters count it; other names are an edge to the module that holds them.
            names = [f"{target}.{alias.name}" for alias in node.names]
            submodules = {n for n in names if n in modules}
            found.update(submodules)
            if len(submodules) < len(names):
                found.add(target)
    resolved = set()
    for target in found:
        while target and target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        resolved.add(target if target in modules else target.split(".")[0])
    resolved.discard(name)
    return resolved


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """The project's import graph, outside libraries included as leaves."""
    modules = _module_files()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_graph_sees_every_package(graph):
    """The walk finds the packages it checks (a wrong root would make every test pass)."""
    tops = {name.split(".")[0] for name in graph}
    assert tops == {*PACKAGES, *TOP_MODULES}
    assert len(graph) > 60
    assert any(target.startswith("webapp") for target in graph["worker.tasks"])


def test_imports_run_one_way(graph):
    """webapp never imports worker or cli; ml imports none of the others; ml no Flask."""
    ours = {*PACKAGES, *TOP_MODULES}
    wrong = []
    for name, targets in graph.items():
        top = name.split(".")[0]
        for target in targets:
            target_top = target.split(".")[0]
            if target_top in ours and target_top not in ALLOWED[top]:
                wrong.append(f"{name} -> {target}")
            if target_top in FORBIDDEN_LIBRARIES.get(top, ()):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_no_import_cycles(graph):
    """No module reaches itself through its imports (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue  # an outside library
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_cycle_finder_finds_a_cycle(tmp_path):
    """The walk resolves relative and package imports (checked on a made-up circle)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x\n")
    modules = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    assert _imports("pkg.a", modules["pkg.a"], modules) == {"pkg.b"}
    assert _imports("pkg.b", modules["pkg.b"], modules) == {"pkg.a"}


def test_web_process_never_loads_the_model_runtime_or_the_worker():
    """Serving pages (the factory gunicorn runs) loads neither TensorFlow, Keras, the
    worker's code nor the command groups."""
    code = (
        "import sys, webapp\n"
        "app = webapp.create_app()\n"
        "c = app.test_client()\n"
        "c.get('/'); c.get('/api/products/1/similar'); c.get('/search/')\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in {'tensorflow', 'keras', 'worker', 'cli'})\n"
        "print(','.join(bad) or 'clean')\n"
    )
    env = {"DATABASE_URL": "sqlite://", "SECRET_KEY": "x", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"


def test_environment_is_read_only_in_config():
    """Nothing but webapp/config.py reads the environment."""
    offenders = []
    for path in _module_files().values():
        text = path.read_text()
        settings = path == ROOT / "webapp" / "config.py"
        if not settings and ("os.environ" in text or "os.getenv" in text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
