"""Imports run one way (docs/architecture.md): entry point -> runtime -> adapters -> core ->
contracts, with the development tools beside the runtime, under the entry point. Checked on the
source of every module, imports inside functions included, and on what a worker really loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

#: Package prefix -> the first-party packages its modules may import (their own included).
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "streams.contracts": ("streams.contracts",),
    "streams.core": ("streams.contracts", "streams.core"),
    "agents.settings": ("streams", "agents.settings"),
    "agents.kafka": ("streams", "agents.settings", "agents.kafka"),
    "agents.redis": ("streams", "agents.settings", "agents.redis"),
    "agents.metrics": ("streams", "agents.settings", "agents.metrics"),
    "agents.state": ("streams", "agents.settings", "agents.state"),
    "agents.runtime": (
        "streams",
        "agents.settings",
        "agents.kafka",
        "agents.redis",
        "agents.metrics",
        "agents.state",
        "agents.runtime",
    ),
    "devtools": ("streams", "agents.settings", "agents.kafka", "agents.redis", "agents.metrics", "devtools"),
    "bench": ("streams", "agents.settings", "agents.kafka", "agents.redis", "devtools", "bench"),
    "mkpi": ("streams", "agents", "devtools", "mkpi"),
}
FIRST_PARTY = ("streams", "agents", "devtools", "bench", "mkpi")
#: What the pure layers may use beyond the standard library.
PURE_THIRD_PARTY = {"msgspec", "yaml"}
PURE = ("streams.contracts", "streams.core")


def modules() -> dict[str, Path]:
    found = {}
    for package in FIRST_PARTY:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__init__.py" and not imported(path):
                continue  # a package marker (a docstring at most) imports nothing
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def layer_of(module: str) -> str:
    matches = [prefix for prefix in MAY_IMPORT if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no layer: add it to MAY_IMPORT and docs/architecture.md"
    return max(matches, key=len)


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("module", sorted(modules()))
def test_a_module_imports_only_the_layers_below_it(module: str) -> None:
    layer = layer_of(module)
    allowed = MAY_IMPORT[layer]
    for name in imported(modules()[module]):
        if within(name, FIRST_PARTY):
            assert within(name, allowed), f"{module} ({layer}) imports {name}"
        elif within(module, PURE):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in PURE_THIRD_PARTY, (
                f"{module} is pure but imports {name}"
            )


def test_the_checker_sees_an_upward_import() -> None:
    """The rule above can fail: a core module importing a runtime one is caught, and so is the
    runtime importing a development tool or the command."""
    assert not within("agents.runtime.app", MAY_IMPORT[layer_of("streams.core.engine")])
    assert not within("devtools.generator", MAY_IMPORT[layer_of("agents.runtime.ingest")])
    assert not within("mkpi.cli", MAY_IMPORT[layer_of("devtools.stack.workers")])
    assert not any("mkpi" in MAY_IMPORT[layer] for layer in MAY_IMPORT if not within(layer, ("mkpi",)))
    assert "aiokafka" not in sys.stdlib_module_names and "aiokafka" not in PURE_THIRD_PARTY


def test_a_worker_loads_no_development_tool() -> None:
    """What ``mkpi worker`` imports before it runs: the CLI, its parser and the Faust app."""
    program = (
        "import sys\n"
        "from mkpi.cli import build_parser, _stories_for\n"
        "build_parser(_stories_for(['worker'])).parse_args(['worker'])\n"
        "import agents.runtime.app, agents.runtime.worker\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('devtools', 'bench'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
