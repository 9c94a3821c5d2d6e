"""The sidecar is a program of its own: it never imports the job service.

It runs on the AI server, next to vLLM and WhisperX, from the same package
but without the job service's database or API. Every module of
`ai_service.sidecar`, and every `ai_service` module those import in turn
(at module level, inside functions, under `TYPE_CHECKING`, or by a constant
`importlib.import_module`), is read as source; none may reach the API, the
store, the database plumbing, the workers or the maintenance services.
A fresh interpreter importing the sidecar checks the same at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from pathlib import Path

import ai_service

ROOT = "ai_service"
SOURCE = Path(ai_service.__file__).parent
# The job service: its HTTP API, its database access, its workers and what
# runs next to them against the database.
FORBIDDEN = (
    "ai_service.api",
    "ai_service.store",
    "ai_service.db",
    "ai_service.worker",
    "ai_service.maintenance",
    "ai_service.notifier",
    "ai_service.leader",
    "ai_service.migrate",
    "ai_service.migrations",
    "ai_service.embedded_db",
)


def source_of(module: str) -> Path | None:
    """The file of an `ai_service` module or package, or None when there is none."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    path = SOURCE.joinpath(*parts[1:])
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_names(module: str) -> set[str]:
    """Every module name `module`'s source may import."""
    path = source_of(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return names_in(path.read_text(encoding="utf-8"), package)


def names_in(source: str, package: str) -> set[str]:
    """Every module name `source` (a module of `package`) may import, relative ones resolved."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            names.add(base)
            # `from ai_service import errors` imports a module, not a name.
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _constant_import(node) is not None:
            names.add(str(_constant_import(node)))
    return names


def _constant_import(call: ast.Call) -> str | None:
    """The module of `importlib.import_module("x")` or `__import__("x")`, else None."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def with_parents(module: str) -> list[str]:
    """`a.b.c` -> `a`, `a.b`, `a.b.c`: importing a module runs its packages first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def reached_from(starts: list[str]) -> dict[str, str | None]:
    """Every `ai_service` module reachable from `starts`, each with the module that imports it."""
    seen: dict[str, str | None] = {}
    queue: deque[tuple[str, str | None]] = deque((start, None) for start in starts)
    while queue:
        module, importer = queue.popleft()
        for name in with_parents(module):
            if name in seen or source_of(name) is None:
                continue
            seen[name] = importer
            queue.extend((found, name) for found in imported_names(name))
    return seen


def chain(reached: dict[str, str | None], module: str) -> str:
    """`start -> ... -> module`, the import path that reaches `module`."""
    links = [module]
    while (importer := reached[links[-1]]) is not None:
        links.append(importer)
    return " -> ".join(reversed(links))


def forbidden(reached: dict[str, str | None]) -> list[str]:
    return sorted(
        chain(reached, module)
        for module in reached
        if any(module == f or module.startswith(f"{f}.") for f in FORBIDDEN)
    )


def sidecar_modules() -> list[str]:
    package = SOURCE / "sidecar"
    return sorted(
        "ai_service.sidecar" if path.stem == "__init__" else f"ai_service.sidecar.{path.stem}"
        for path in package.glob("*.py")
    )


def test_the_sidecar_modules_are_all_read() -> None:
    modules = sidecar_modules()
    assert {"ai_service.sidecar.app", "ai_service.sidecar.main"} <= set(modules)
    assert set(modules) <= set(reached_from(modules))


def test_no_sidecar_module_reaches_the_job_service() -> None:
    reached = reached_from(sidecar_modules())
    # The walk follows imports out of the package: the shared modules are reached.
    assert {
        "ai_service.config",
        "ai_service.error_envelope",
        "ai_service.providers.probes",
        "ai_service.redact",
    } <= set(reached)
    violations = forbidden(reached)
    assert not violations, "the sidecar imports the job service:\n" + "\n".join(violations)


def test_the_walk_sees_the_api_reach_the_store() -> None:
    # The check is not vacuous: the API app does import the job service.
    found = forbidden(reached_from(["ai_service.api.app"]))
    assert "ai_service.api.app -> ai_service.store" in found
    assert any(path.endswith(" -> ai_service.db") for path in found)


def test_function_level_imports_are_followed() -> None:
    # `cli` imports the sidecar, the API and the worker inside its command functions.
    reached = reached_from(["ai_service.cli"])
    assert {"ai_service.sidecar.main", "ai_service.api.server", "ai_service.worker.main"} <= set(
        reached
    )


def test_relative_type_checking_and_dynamic_imports_are_seen() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import gpu\n"
        "from ..api.errors import responses\n"
        "if TYPE_CHECKING:\n"
        "    from ai_service.store import Store\n"
        "def later():\n"
        "    import importlib\n"
        "    importlib.import_module('ai_service.worker.main')\n"
        "    __import__('ai_service.db')\n"
    )
    names = names_in(source, "ai_service.sidecar")
    assert {
        "ai_service.sidecar.gpu",
        "ai_service.api.errors",
        "ai_service.store",
        "ai_service.worker.main",
        "ai_service.db",
    } <= names


def test_importing_the_sidecar_loads_nothing_of_the_job_service() -> None:
    code = (
        "import sys\n"
        "import ai_service.sidecar.app, ai_service.sidecar.main\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('ai_service'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "ai_service.sidecar.app" in loaded
    assert [m for m in loaded if any(m == f or m.startswith(f"{f}.") for f in FORBIDDEN)] == []
