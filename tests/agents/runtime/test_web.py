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
    health = Health(lambda: 1, lambda: None)
    server = WebServer(Settings(), Metrics(), ChannelRules.load().channels, health)
    with pytest.raises(web.HTTPBadRequest) as refused:
        await server._kpis(make_mocked_request("GET", f"/api/kpis?{query}"))
    assert named in refused.value.text and "unknown" in refused.value.text


async def test_with_a_token_the_board_and_api_need_it_and_metrics_and_probes_do_not() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    token = "t" * 32
    settings = Settings().replace(web_token=token)
    server = WebServer(settings, Metrics(), ChannelRules.load().channels, Health(lambda: 1, lambda: None))

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="board")

    application = web.Application(middlewares=[server._require_token])
    application.router.add_get("/board", page)
    application.router.add_get("/api/kpis", page)
    application.router.add_get("/metrics", page)
    application.router.add_get("/readyz", page)
    async with TestClient(TestServer(application)) as client:
        assert (await client.get("/api/kpis")).status == 401
        assert (await client.get("/api/kpis", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.get("/api/kpis", headers={"Authorization": f"Bearer {token}"})).status == 200
        assert (await client.get("/metrics")).status == 200 and (await client.get("/readyz")).status == 200
        first = await client.get(f"/board?token={token}")
        assert first.status == 200 and "mkpi_token" in first.cookies
        assert (await client.get("/api/kpis")).status == 200, "the cookie the link set"
