"""Prometheus configuration, recording and alerting rules, checked and unit-tested by promtool
(extracted from Debian's prometheus package by scripts/bootstrap.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / ".tools" / "promtool"
PROMETHEUS = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    if not PROMTOOL.exists():
        pytest.fail("promtool is missing: run scripts/bootstrap.sh (it extracts it into .tools/)")
    result = subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_prometheus_configuration_and_its_rule_files_are_valid() -> None:
    output = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "2 rule files found" in output


def test_rules_behave_as_their_unit_tests_say() -> None:
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    assert "SUCCESS" in promtool("test", "rules", *map(str, tests))


def test_every_alert_is_unit_tested() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "rules" / "mkpi-alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    tested = {
        case["alertname"]
        for path in (PROMETHEUS / "tests").glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert alerts - tested == set(), "alerts without a promtool test"
