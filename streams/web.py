"""The worker's HTTP server: /metrics for Prometheus, /healthz, and /api/kpis over the Redis view.

It replaces Faust's own web stack (whose table-browsing routes are not wanted) and is
bound to loopback unless MKPI_WEB_HOST says otherwise.
"""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from streams.kpis import ALL_TIME
from streams.metrics import Metrics
from streams.settings import Settings
from streams.view import RedisView, ViewQuery

_encoder = msgspec.json.Encoder()


class WebServer(Service):
    def __init__(self, settings: Settings, metrics: Metrics, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._view: RedisView | None = None

    @property
    def web_url(self) -> str:
        return self.settings.web_url

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _kpis(self, request: web.Request) -> web.Response:
        """GET /api/kpis?window=60&kpi=...&channel=...&campaign=... -> the newest values."""
        params = request.query
        sizes = (*self.settings.windowing.sizes, ALL_TIME)
        try:
            window = int(params.get("window", sizes[0]))
        except ValueError:
            window = -1
        if window not in sizes:
            raise web.HTTPBadRequest(text=f"window must be one of {', '.join(map(str, sizes))}")
        query = ViewQuery(window, params.get("kpi"), params.get("channel"), params.get("campaign"))
        assert self._view is not None
        try:
            updates = await self._view.latest(query)
        except (RedisError, OSError) as exc:
            raise web.HTTPServiceUnavailable(text=f"the Redis view is unavailable: {exc}") from None
        return web.Response(body=_encoder.encode(updates), content_type="application/json")

    async def on_start(self) -> None:
        self._view = RedisView(aioredis.Redis.from_url(self.settings.redis_url), self.settings.topic_prefix)
        application = web.Application()
        application.router.add_get("/metrics", self._metrics)
        application.router.add_get("/healthz", self._health)
        application.router.add_get("/api/kpis", self._kpis)
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.web_host, self.settings.web_port).start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._view is not None:
            await self._view.client.aclose()
