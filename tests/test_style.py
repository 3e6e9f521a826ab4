"""The code stays ruff- and mypy-clean and ruff-formatted (the same checks as .pre-commit-config.yaml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

CHECKS = {
    "ruff check": ["ruff", "check", "--no-cache", "."],
    "ruff format": ["ruff", "format", "--check", "--no-cache", "."],
    "mypy": ["mypy", "--no-incremental"],
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_code_passes(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *CHECKS[name]], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
