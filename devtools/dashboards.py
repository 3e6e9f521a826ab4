"""Write the Grafana dashboards of the KPIs from the catalog and the roles, so that a KPI, its
unit and its metric cannot drift apart between the worker and the boards.

``mkpi dashboards`` rewrites ``deploy/grafana/dashboards/team/{overview,campaign}.json`` and
``deploy/grafana/dashboards/roles/<role>.json``; ``mkpi dashboards --check`` (run by the tests)
fails when a committed file is stale. ``team/pipeline.json`` (pipeline health) is kept by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents.metrics.registry import kpi_metric
from streams.core.catalog import KPI_UNITS, Unit
from streams.core.roles import OVERVIEW, ROLES, Role

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONED_DATASOURCE_UID = "mkpi-prometheus"
GRAFANA_UNITS = {Unit.COUNT: "short", Unit.RATIO: "percentunit", Unit.SECONDS: "s"}
WINDOWS = ("60s", "3600s", "86400s")


def title_of(kpi: str) -> str:
    return kpi.replace("_", " ").capitalize()


def _selector(kpi: str, channel: str, campaign: str) -> str:
    return f'kpi="{kpi}", window="$window", channel{channel}, campaign{campaign}'


def current(kpi: str, channel: str = '="*"', campaign: str = '="$campaign"') -> str:
    return f"{kpi_metric('mkpi_kpi_current', kpi)}{{{_selector(kpi, channel, campaign)}}}"


def last_closed(kpi: str, channel: str = '="*"', campaign: str = '="$campaign"') -> str:
    return f"{kpi_metric('mkpi_kpi_last_closed', kpi)}{{{_selector(kpi, channel, campaign)}}}"


def change_against(series: str, offset: str) -> str:
    """The relative change of ``series`` against its value ``offset`` ago."""
    return f"({series} - ({series} offset {offset})) / abs({series} offset {offset})"


def _target(ref: str, expr: str, legend: str) -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}


def _panel(
    panel_id: int,
    kind: str,
    title: str,
    grid: tuple[int, int, int, int],
    unit: str,
    targets: list[dict[str, Any]],
    description: str = "",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    panel: dict[str, Any] = {
        "id": panel_id,
        "type": kind,
        "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets,
    }
    if description:
        panel["description"] = description
    if options:
        panel["options"] = options
    return panel


def _annotations(kpis: tuple[str, ...] | None) -> dict[str, Any]:
    """Firing Prometheus alerts and in-stream drop alert events; only the given KPIs' if any."""
    only = "" if kpis is None else f', kpi=~"{"|".join(kpis)}"'
    return {
        "list": [
            {
                "name": "Firing alerts",
                "datasource": DATASOURCE,
                "enable": True,
                "iconColor": "red",
                "expr": f'ALERTS{{alertstate="firing", alertname=~"Mkpi.*"{only}}}',
                "step": "1m",
                "titleFormat": "{{alertname}}",
                "textFormat": "{{channel}} {{campaign}}",
                "useValueForTime": False,
            },
            {
                "name": "In-stream drop alerts",
                "datasource": DATASOURCE,
                "enable": True,
                "iconColor": "orange",
                "expr": "sum by (rule, kpi, status, cause) (increase(mkpi_alerts_total"
                + ("" if kpis is None else f'{{kpi=~"{"|".join(kpis)}"}}')
                + "[2m])) > 0",
                "step": "1m",
                "titleFormat": "{{rule}} {{status}}",
                "textFormat": "{{kpi}}: {{cause}}",
                "useValueForTime": False,
            },
        ]
    }


def _variables(campaign_query: str | None, default_campaign: str | None = None) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {"text": "Prometheus", "value": PROVISIONED_DATASOURCE_UID},
            "hide": 0,
        }
    ]
    if campaign_query is not None:
        campaign: dict[str, Any] = {
            "name": "campaign",
            "label": "Campaign",
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": campaign_query, "refId": "campaigns"},
            "definition": campaign_query,
            "refresh": 2,
            "sort": 1,
            "includeAll": False,
            "multi": False,
        }
        if default_campaign is not None:
            campaign["current"] = {"text": default_campaign, "value": default_campaign}
        variables.append(campaign)
    variables.append(
        {
            "name": "window",
            "label": "Window",
            "type": "custom",
            "query": ",".join(WINDOWS),
            "current": {"text": "3600s", "value": "3600s"},
            "options": [{"text": w, "value": w, "selected": w == "3600s"} for w in WINDOWS],
        }
    )
    return variables


def _dashboard(
    uid: str,
    title: str,
    tags: list[str],
    variables: list[dict[str, Any]],
    panels: list[dict[str, Any]],
    annotations: dict[str, Any],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": tags,
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": annotations,
        "templating": {"list": variables},
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    """Every KPI by channel over all campaigns: the generalist's board."""
    panels = []
    for index, kpi in enumerate(OVERVIEW.kpis):
        every, overall = current(kpi, '!="*"', '="*"'), current(kpi, '="*"', '="*"')
        panels.append(
            _panel(
                index + 1,
                "timeseries",
                f"{title_of(kpi)} by channel",
                (index % 3 * 8, index // 3 * 7, 8, 7),
                GRAFANA_UNITS[KPI_UNITS[kpi]],
                [_target("A", every, "{{channel}}"), _target("B", overall, "all channels")],
                f"Value of {kpi} in the newest window of the chosen size "
                f"({kpi_metric('mkpi_kpi_current', kpi)}).",
            )
        )
    return _dashboard(
        "mkpi-overview",
        "Marketing KPIs: overview by channel",
        ["mkpi", "overview"],
        _variables(None),
        panels,
        _annotations(None),
    )


def campaign() -> dict[str, Any]:
    """Every KPI of one campaign, the current and the last closed window, and its raw counters."""
    panels = []
    for index, kpi in enumerate(OVERVIEW.kpis):
        panels.append(
            _panel(
                index + 1,
                "timeseries",
                title_of(kpi),
                (index % 4 * 6, index // 4 * 6, 6, 6),
                GRAFANA_UNITS[KPI_UNITS[kpi]],
                [
                    _target("A", current(kpi), "current window"),
                    _target("B", last_closed(kpi), "last closed window"),
                ],
            )
        )
    rows = (len(OVERVIEW.kpis) + 3) // 4 * 6
    open_rate = 'channel_campaign:mkpi_email_open_rate:ratio_rate1h{channel="*", campaign="$campaign"}'
    panels.append(
        _panel(
            len(panels) + 1,
            "timeseries",
            "Hourly email open rate vs. a week ago (from raw counters)",
            (0, rows, 12, 8),
            "percentunit",
            [_target("A", open_rate, "last hour"), _target("B", f"{open_rate} offset 1w", "a week before")],
        )
    )
    counted = (
        'sum by (measure) (rate(mkpi_measure_total{channel="*", campaign="$campaign"}[$__rate_interval]))'
    )
    panels.append(
        _panel(
            len(panels) + 1,
            "timeseries",
            "Counted events per second by measure",
            (12, rows, 12, 8),
            "short",
            [_target("A", counted, "{{measure}}")],
        )
    )
    return _dashboard(
        "mkpi-campaign",
        "Marketing KPIs: campaign drill-down",
        ["mkpi", "campaign"],
        _variables('label_values(mkpi_kpi_current{channel="*", campaign!="*"}, campaign)'),
        panels,
        _annotations(None),
    )


def role_dashboard(role: Role) -> dict[str, Any]:
    """A row per KPI of the role: the newest closed window, its change against a day and a week
    before, the course of the three, and the split by channel (over all campaigns: Prometheus
    has no channel series per campaign)."""
    panels: list[dict[str, Any]] = []
    for row, kpi in enumerate(role.kpis):
        unit, y = GRAFANA_UNITS[KPI_UNITS[kpi]], row * 7
        closed = last_closed(kpi)

        stat = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "none", "graphMode": "area"}
        changes = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value", "graphMode": "none"}
        first = len(panels) + 1
        panels += [
            _panel(
                first,
                "stat",
                title_of(kpi),
                (0, y, 5, 7),
                unit,
                [_target("A", closed, "newest closed window")],
                f"{kpi} in the newest closed window of the chosen size "
                f"({kpi_metric('mkpi_kpi_last_closed', kpi)}).",
                stat,
            ),
            *(
                _panel(
                    first + index,
                    "stat",
                    f"vs a {period} before",
                    (2 + 3 * index, y, 3, 7),
                    "percentunit",
                    [_target("A", change_against(closed, offset), "change")],
                    f"Change against the same window a {period} before.",
                    changes,
                )
                for index, (period, offset) in enumerate((("day", "1d"), ("week", "1w")), start=1)
            ),
            _panel(
                first + 3,
                "timeseries",
                f"{title_of(kpi)}: now, a day and a week before",
                (11, y, 8, 7),
                unit,
                [
                    _target("A", closed, "newest closed window"),
                    _target("B", f"{closed} offset 1d", "a day before"),
                    _target("C", f"{closed} offset 1w", "a week before"),
                ],
            ),
            _panel(
                first + 4,
                "bargauge",
                "By channel (all campaigns)",
                (19, y, 5, 7),
                unit,
                [_target("A", last_closed(kpi, '!="*"', '="*"'), "{{channel}}")],
                options={
                    "orientation": "horizontal",
                    "displayMode": "basic",
                    "reduceOptions": {"calcs": ["lastNotNull"]},
                },
            ),
        ]
    return _dashboard(
        f"mkpi-role-{role.name}",
        f"Marketing KPIs: {role.title} ({role.reader})",
        ["mkpi", "role", role.name],
        _variables('label_values(mkpi_kpi_current{channel="*"}, campaign)', default_campaign="*"),
        panels,
        _annotations(role.kpis),
    )


def render_all() -> dict[str, str]:
    """Path under the dashboards folder -> file text."""
    documents = {"team/overview.json": overview(), "team/campaign.json": campaign()}
    documents |= {f"roles/{role.name}.json": role_dashboard(role) for role in ROLES}
    return {
        path: json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        for path, document in documents.items()
    }


def stale_files(root: Path) -> list[str]:
    return [
        path
        for path, text in render_all().items()
        if not (root / path).exists() or (root / path).read_text(encoding="utf-8") != text
    ]


def write_all(root: Path) -> list[str]:
    written = []
    for path, text in render_all().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(path)
    return written
