"""The provisioned Grafana dashboards: two folders (the team's, one per role), written from the
catalog and the roles, structure, ids, variables, a metric of the right unit for every KPI, and
PromQL that parses (promtool checks every expression as a recording rule)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.metrics.registry import kpi_metric
from devtools.dashboards import GRAFANA_UNITS, stale_files
from streams.core.catalog import KPI_UNITS
from streams.core.roles import ROLES, Role

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "deploy" / "grafana" / "dashboards"
DASHBOARDS = sorted(FOLDER.rglob("*.json"))
PROMTOOL = ROOT / ".tools" / "promtool"
#: Values for Grafana's variables, to parse the expressions as Prometheus would receive them.
VARIABLE_VALUES = {"$window": "3600s", "$campaign": "spring_sale", "$__rate_interval": "5m"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a]
    return exprs


def test_the_team_folder_and_one_board_per_role_are_provisioned() -> None:
    folders = {path.relative_to(FOLDER).as_posix() for path in DASHBOARDS}
    assert folders == {"team/overview.json", "team/campaign.json", "team/pipeline.json"} | {
        f"roles/{role.name}.json" for role in ROLES
    }
    assert len({load(path)["uid"] for path in DASHBOARDS}) == len(DASHBOARDS)
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/mkpi.yml").read_text())
    mounted = "/var/lib/grafana/dashboards"  # docker-compose mounts deploy/grafana/dashboards there
    paths = {p["folder"]: p["options"]["path"].removeprefix(mounted + "/") for p in providers["providers"]}
    assert paths == {"Marketing KPIs": "team", "Marketing KPIs by role": "roles"}


def test_the_generated_dashboards_are_up_to_date() -> None:
    assert stale_files(FOLDER) == [], "run 'mkpi dashboards' and commit the result"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_kpi_is_read_from_the_metric_of_its_unit(path: Path) -> None:
    """A ratio from mkpi_kpi_current_ratio, seconds from ..._seconds, counts from the plain one;
    and the panel's unit says the same."""
    for panel in load(path)["panels"]:
        for target in panel["targets"]:
            for metric, kpi in re.findall(
                r'(mkpi_kpi_(?:current|last_closed)\w*)\{kpi="(\w+)"', target["expr"]
            ):
                base = "mkpi_kpi_current" if metric.startswith("mkpi_kpi_current") else "mkpi_kpi_last_closed"
                assert metric == kpi_metric(base, kpi), (path.name, panel["title"], metric, kpi)
                if panel["type"] != "stat" or "before" not in panel["title"]:
                    assert panel["fieldConfig"]["defaults"]["unit"] == GRAFANA_UNITS[KPI_UNITS[kpi]], panel


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_a_roles_board_holds_its_kpis_with_comparisons_and_its_alerts(role: Role) -> None:
    dashboard = load(FOLDER / "roles" / f"{role.name}.json")
    text = json.dumps(dashboard)
    assert set(re.findall(r'kpi=\\"([a-z_]+)\\"', text)) == set(role.kpis)
    for kpi in role.kpis:
        assert f'kpi=\\"{kpi}\\"' in text and "offset 1d" in text and "offset 1w" in text
    kinds = [panel["type"] for panel in dashboard["panels"]]
    assert kinds.count("bargauge") == len(role.kpis), "a channel split per KPI"
    for annotation in dashboard["annotations"]["list"]:
        assert "|".join(role.kpis) in annotation["expr"], "only the role's alerts"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_structure_ids_datasource_and_variables(path: Path) -> None:
    dashboard = load(path)
    provisioned_uid = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    assert dashboard["title"] and dashboard["uid"] and dashboard["panels"]
    # A datasource variable, not a fixed uid: the dashboard imports into any Grafana with a
    # Prometheus, and picks the provisioned one here.
    (chooser,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert chooser["query"] == "prometheus" and chooser["current"]["value"] == provisioned_uid
    datasource_uid = "${" + chooser["name"] + "}"
    assert provisioned_uid not in path.read_text(encoding="utf-8").replace(chooser["current"]["value"], "", 1)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"][
            "w"
        ] <= 24
        assert panel["datasource"]["uid"] == datasource_uid
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= defined, (panel["title"], used - defined)
    assert any("ALERTS" in a.get("expr", "") for a in dashboard["annotations"]["list"]), "alert annotations"


def catalog_kpis() -> set[str]:
    """The KPI names of the KPI table in docs/kpis.md (its first column)."""
    table = (ROOT / "docs" / "kpis.md").read_text().split("| kpi | value | from |")[1].split("\n\n")[0]
    return {name for row in table.splitlines()[2:] for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_every_kpi_of_the_catalog_is_on_the_overview_and_the_drill_down() -> None:
    kpis = catalog_kpis()
    assert len(kpis) == 19, kpis
    for name in ("overview", "campaign"):
        text = (FOLDER / "team" / f"{name}.json").read_text()
        shown = set(re.findall(r'kpi=\\"([a-z_]+)\\"', text))
        assert kpis <= shown, (name, kpis - shown)


def test_every_expression_parses(tmp_path: Path) -> None:
    if not PROMTOOL.exists():
        pytest.fail("promtool is missing: run scripts/bootstrap.sh (it extracts it into .tools/)")
    rules = []
    for path in DASHBOARDS:
        for index, expr in enumerate(expressions(load(path))):
            for variable, value in VARIABLE_VALUES.items():
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:{path.stem}:{index}", "expr": expr})
    rule_file = tmp_path / "dashboards.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
