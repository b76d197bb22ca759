"""The wiring rules of docs/architecture.md, checked on the source: only the
composition root (agent/) and the HTTP layer (api/) import ``cove.api``,
and the API never imports the agent that wires it."""

from __future__ import annotations

import ast
from pathlib import Path

import cove

SRC = Path(cove.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_only_agent_and_api_import_the_api() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        package = path.relative_to(SRC).parts[0]
        if package in ("agent", "api"):
            continue
        if any(m == "cove.api" or m.startswith("cove.api.") for m in _imports(path)):
            offenders.append(str(path.relative_to(SRC)))
    assert offenders == []


def test_the_api_does_not_import_the_agent() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in sorted((SRC / "api").rglob("*.py"))
        if any(m.startswith("cove.agent") for m in _imports(path))
    ]
    assert offenders == []


def _from_imports(path: Path) -> set[str]:
    """``from X import a, b`` as ``X.a`` and ``X.b`` (absolute imports)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_datapath_imports_nothing_from_the_runtime() -> None:
    offenders = [
        str(path.relative_to(SRC))
        for path in sorted((SRC / "datapath").rglob("*.py"))
        if any(m.startswith("cove.runtime") for m in _imports(path))
    ]
    assert offenders == []


def test_domain_packages_see_only_the_datapath_protocols() -> None:
    offenders = []
    for package in ("runtime", "network", "lb", "policy"):
        for path in sorted((SRC / package).rglob("*.py")):
            for name in _from_imports(path):
                if name.startswith("cove.datapath.") and not name.startswith("cove.datapath.base"):
                    offenders.append(f"{path.relative_to(SRC)}: {name}")
    assert offenders == []


def test_no_code_asks_which_store_backend_it_has() -> None:
    concrete = ("MemoryStore", "SqliteStore", "EtcdStore")
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance"
                and any(c in ast.unparse(node.args[1]) for c in concrete)
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
