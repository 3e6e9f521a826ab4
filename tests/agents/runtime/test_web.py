"""The KPI API refuses names it does not know, naming the ones it does."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from agents.metrics.registry import Metrics
from agents.runtime.health import Health
from agents.runtime.web import WebServer
from agents.settings import Settings
from streams.core.attribution import ChannelRules


@pytest.mark.parametrize(
    ("query", "named"),
    [("kpi=organic_trafic", "organic_traffic"), ("channel=organic&kpi=leads", "organic_search")],
)
async def test_an_unknown_kpi_or_channel_is_a_bad_request(query: str, named: str) -> None:
    health = Health(lambda: 1, lambda: False)
    server = WebServer(Settings(), Metrics(), ChannelRules.load().channels, health)
    with pytest.raises(web.HTTPBadRequest) as refused:
        await server._kpis(make_mocked_request("GET", f"/api/kpis?{query}"))
    assert named in refused.value.text and "unknown" in refused.value.text
