"""The lock files pin every dependency of pyproject.toml, within its bounds, and are what
bootstrap (and so CI) and the Dockerfile install."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            package, sep, version = line.partition("==")
            assert sep and version, f"{name}: not pinned: {line!r}"
            found[canonicalize_name(package)] = version
    return found


def declared() -> tuple[list[Requirement], list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = [Requirement(spec) for spec in project["dependencies"]]
    dev = [Requirement(spec) for spec in project["optional-dependencies"]["dev"]]
    return runtime, dev


def test_every_dependency_is_pinned_within_its_bounds() -> None:
    runtime, dev = declared()
    for lock, requirements in (("requirements.lock", runtime), ("requirements-dev.lock", runtime + dev)):
        locked = pins(lock)
        for requirement in requirements:
            version = locked.get(canonicalize_name(requirement.name))
            assert version is not None, f"{lock} does not pin {requirement.name}"
            assert requirement.specifier.contains(version, prereleases=True), (lock, requirement, version)


def test_the_runtime_lock_is_the_dev_lock_without_the_tools() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    assert "pytest" in dev and "pytest" not in runtime and "mypy" not in runtime


def test_bootstrap_and_the_image_install_from_the_locks() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    assert "pip install -q -r requirements-dev.lock" in bootstrap
    assert "pip install -q --no-deps -e ." in bootstrap
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "requirements.lock" in dockerfile.split("COPY", 2)[1], "copied before the install"
    assert "pip install --no-cache-dir -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
