"""The mkpi command's own behaviour: errors that name the valid choices, exit statuses, a
reader that goes away, and hints that show how this command was called."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mkpi import cli
from tests.support import REPO


def mkpi(
    *args: str, extra_env: dict[str, str] | None = None, **options: object
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKPI_")}
    env.update({"MKPI_INSECURE_DEV_MODE": "true", **(extra_env or {})})
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "mkpi", *args],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
        **options,
    )


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MKPI_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mkpi", "config"],
        cwd=REPO,
        env={**env, "MKPI_INSECURE_DEV_MODE": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `| head -0`: gone before the first line
    status = process.wait(timeout=60)
    errors = process.stderr.read().decode()
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert status == 141


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [("--kpi", "organic_trafic", "organic_traffic"), ("--channel", "organic", "organic_search")],
)
def test_query_names_the_valid_values_of_an_unknown_one(option: str, value: str, named: str) -> None:
    result = mkpi("query", option, value)
    assert result.returncode == 2
    assert f"{option} {value!r} is unknown" in result.stderr and named in result.stderr
    assert "unique_visitors" in result.stderr or option == "--channel"


def test_stack_status_fails_when_nothing_answers(tmp_path: Path) -> None:
    result = mkpi(
        "stack",
        "status",
        extra_env={
            "MKPI_KAFKA_BOOTSTRAP": "127.0.0.1:1",
            "MKPI_REDIS_URL": "redis://u:sekret@127.0.0.1:2/0",
            "MKPI_STACK_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("not answering") == 2
    assert "sekret" not in result.stdout + result.stderr


def test_hints_show_how_the_command_was_called(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cli.shutil, "which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / ".venv" / "bin" / "mkpi"), "run"])
    assert cli.program() == os.path.join(".venv", "bin", "mkpi")
    monkeypatch.setattr(sys, "argv", ["/opt/elsewhere/bin/mkpi", "run"])
    assert cli.program() == "/opt/elsewhere/bin/mkpi"
    monkeypatch.setattr(cli.shutil, "which", lambda name: "/opt/elsewhere/bin/mkpi")
    assert cli.program() == "mkpi", "on PATH: its name"
    monkeypatch.setattr(sys, "argv", [str(REPO / "mkpi" / "__main__.py"), "run"])
    assert cli.program() == "mkpi", "python -m mkpi"


@pytest.mark.parametrize("command", [None, *sorted(cli.COMMANDS)])
def test_every_command_prints_its_help(command: str | None) -> None:
    """`--help` of the command and of each subcommand exits 0 with a usage line (a help text
    with a bare % made argparse raise instead)."""
    result = mkpi(*([] if command is None else [command]), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mkpi"), result.stdout


def test_config_prints_effective_values_and_where_they_come_from(tmp_path: Path) -> None:
    config = tmp_path / "mkpi.toml"
    config.write_text("partitions = 6\n")
    result = mkpi(
        "config",
        extra_env={"MKPI_GRACE_SECONDS": "30", "MKPI_CONFIG_FILE": str(config), "MKPI_WEB_TOKEN": "t" * 32},
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["MKPI_GRACE_SECONDS"] == "30  # environment"
    assert lines["MKPI_PARTITIONS"] == f"6  # file {config}"
    assert lines["MKPI_WINDOW_SIZES"] == "60,3600,86400  # default"
    assert lines["MKPI_INSECURE_DEV_MODE"] == "true  # environment", "booleans as a variable takes them"
    assert (
        lines["MKPI_ALERT_RULES_FILE"]
        == "  # default; empty: the shipped rules, streams/core/alert_rules.yml"
    )
    assert lines["MKPI_WEB_TOKEN"] == "***  # environment"
