"""The peers' environments: Quix Streams in a virtualenv of its own, and the baseline commit's
worker in a git worktree, each made once and reused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agents.settings import Settings
from bench.workers import REPO
from devtools.stack.settings import StackSettings

QUIX_LOCK = REPO / "bench" / "quix.lock"


def quix_python(stack: StackSettings) -> Path:
    """The Python of Quix Streams' virtualenv, installed from ``bench/quix.lock`` when missing
    or older than the lock."""
    venv = stack.home / "bench-quix"
    python = venv / "bin" / "python"
    stamp = venv / "installed.lock"
    if not python.exists() or not stamp.exists() or stamp.read_text() != QUIX_LOCK.read_text():
        print(f"installing Quix Streams into {venv} (bench/quix.lock) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(QUIX_LOCK)], check=True)
        stamp.write_text(QUIX_LOCK.read_text())
    return python


def baseline_tree(stack: StackSettings, commit: str) -> Path:
    """A checkout of ``commit`` (its worker is contender C0), as a git worktree outside the
    repository; it runs with this checkout's virtualenv, so its dependencies must match."""
    resolved = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tree = stack.home / "bench-baseline" / resolved[:12]
    if not (tree / "agents").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), resolved], check=True
        )
    return tree


def unknown_to(tree: Path, settings: Settings) -> tuple[str, ...]:
    """The variables of ``settings`` the worker at ``tree`` would refuse as unknown: those whose
    setting its settings module does not name (a setting is named after its variable, or, in the
    oldest commits, spelled as it). The rest it gets, so it runs on the same topics and keys."""
    source = (tree / "agents" / "settings.py").read_text(encoding="utf-8")
    return tuple(
        name
        for name in settings.as_environment()
        if name not in source and name.removeprefix("MKPI_").lower() not in source
    )
