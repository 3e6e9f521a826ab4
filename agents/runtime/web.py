"""The worker's HTTP server: /metrics for Prometheus, /livez and /readyz for probes, /api/kpis
over the Redis view, and the live board (/board, polling /api/board).

It replaces Faust's own web stack (whose table-browsing routes are not wanted) and is bound to
loopback unless MKPI_WEB_HOST says otherwise; beyond it, MKPI_WEB_TOKEN guards the board and API.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from agents.metrics.registry import Metrics
from agents.redis.connections import redis_client
from agents.redis.view import RedisView, ViewQuery, series_field
from agents.runtime.health import Health, Verdict
from agents.settings import Settings
from streams.contracts.deltas import ALL, ALL_TIME
from streams.contracts.outputs import KpiKey, KpiUpdate
from streams.core.board import (
    DAY,
    DEFAULT_POINTS,
    MAX_POINTS,
    WEEK,
    board_data,
    earlier_window,
    newest_start,
    shown_window,
    window_starts,
)
from streams.core.cells import KPI_NAMES
from streams.core.roles import OVERVIEW, VIEWS

PAGE = Path(__file__).with_name("board.html")
#: Answer without the web token: what Prometheus and the orchestrator's probes call.
OPEN_PATHS = frozenset({"/metrics", "/livez", "/readyz", "/healthz"})
TOKEN_COOKIE = "mkpi_token"

_encoder = msgspec.json.Encoder()


class WebServer(Service):
    def __init__(
        self, settings: Settings, metrics: Metrics, channels: frozenset[str], health: Health, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.metrics = metrics
        self.health = health
        #: What ``?kpi=`` and ``?channel=`` may name (an unknown name answers 400, not nothing).
        self.known = {"kpi": KPI_NAMES, "channel": channels | {ALL}}
        self._runner: web.AppRunner | None = None
        self._view: RedisView | None = None

    @property
    def web_url(self) -> str:
        return self.settings.web.url

    async def _metrics(self, request: web.Request) -> web.Response:
        """The Prometheus exposition; ``?name[]=<sample name>`` (repeatable) restricts it to
        those metrics, as prometheus_client's own handlers do: cheap enough to poll often."""
        names = request.query.getall("name[]", [])
        registry = self.metrics.registry
        body = generate_latest(registry.restricted_registry(names) if names else registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _live(self, request: web.Request) -> web.Response:
        return self._verdict(self.health.live())

    async def _ready(self, request: web.Request) -> web.Response:
        return self._verdict(self.health.ready())

    @staticmethod
    def _verdict(verdict: Verdict) -> web.Response:
        if verdict.ok:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable", "reasons": list(verdict.reasons)}, status=503)

    @Service.task
    async def _heartbeat(self) -> None:
        await self.health.keep_beating()

    async def _kpis(self, request: web.Request) -> web.Response:
        """GET /api/kpis?window=60&kpi=...&channel=...&campaign=... -> the newest values."""
        params = request.query
        for name, known in self.known.items():
            value = params.get(name)
            if value is not None and value not in known:
                raise web.HTTPBadRequest(text=f"unknown {name} {value!r}: one of {', '.join(sorted(known))}")
        window = self._window(request, with_running_total=True)
        query = ViewQuery(window, params.get("kpi"), params.get("channel"), params.get("campaign"))
        assert self._view is not None
        try:
            updates = await self._view.latest(query, self.known["kpi"], self.known["channel"])
        except (RedisError, OSError) as exc:
            raise web.HTTPServiceUnavailable(text=f"the Redis view is unavailable: {exc}") from None
        return web.Response(body=_encoder.encode(updates), content_type="application/json")

    def _window(self, request: web.Request, with_running_total: bool) -> int:
        sizes = (*self.settings.windows.windowing.sizes, *((ALL_TIME,) if with_running_total else ()))
        try:
            window = int(request.query.get("window", sizes[0]))
        except ValueError:
            window = -1
        if window not in sizes:
            raise web.HTTPBadRequest(text=f"window must be one of {', '.join(map(str, sizes))}")
        return window

    async def _board_page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html")

    async def _board(self, request: web.Request) -> web.Response:
        """GET /api/board?view=seo&window=3600&campaign=*&points=30 -> the view's cards."""
        role = VIEWS.get(request.query.get("view", OVERVIEW.name))
        if role is None:
            raise web.HTTPBadRequest(text=f"view must be one of {', '.join(VIEWS)}")
        size = self._window(request, with_running_total=False)
        campaign = request.query.get("campaign", ALL)
        try:
            points = min(max(int(request.query.get("points", DEFAULT_POINTS)), 1), MAX_POINTS)
        except ValueError:
            raise web.HTTPBadRequest(text="points must be a whole number") from None
        windowing = self.settings.windows.windowing
        view = self._view
        assert view is not None
        # Only this campaign's all-channel series of the view's KPIs: the hashes hold every
        # campaign's, and the board polls.
        fields = [series_field(KpiKey(kpi, size, 0, ALL, campaign)) for kpi in role.kpis]
        try:
            latest = await view.latest(ViewQuery(size, campaign=campaign), role.kpis, (ALL,))
            newest = newest_start(latest)
            starts: set[int] = set()
            if newest is not None:
                # The sparkline up to the newest window and the one before it (either can be
                # shown), and the windows a day and a week before each.
                starts.update(window_starts(windowing, size, newest, points + 1))
                for start in window_starts(windowing, size, newest, 2):
                    starts |= {earlier_window(windowing, size, start, s) for s in (DAY, WEEK)}
            history = await view.window_values(size, sorted(starts), fields)
            shown = shown_window(windowing, size, latest, history)
            split: list[KpiUpdate] = []
            if shown is not None:
                channels = sorted(self.known["channel"] - {ALL})
                every_channel = [
                    series_field(KpiKey(kpi, size, 0, channel, campaign))
                    for kpi in role.kpis
                    for channel in channels
                ]
                split = (await view.window_values(size, [shown.start], every_channel))[shown.start]
            alerts = await view.firing_alerts()
        except (RedisError, OSError) as exc:
            raise web.HTTPServiceUnavailable(text=f"the Redis view is unavailable: {exc}") from None
        body = board_data(role, windowing, size, campaign, shown, history, split, alerts, points)
        return web.Response(body=_encoder.encode(body), content_type="application/json")

    @web.middleware
    async def _require_token(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With MKPI_WEB_TOKEN set, the board and the API need it: ``Authorization: Bearer``,
        the cookie a ``?token=`` link sets, or that query itself. /metrics and the probes do not."""
        token = self.settings.web.web_token
        if not token or request.path in OPEN_PATHS:
            return await handler(request)
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ")
        offered = offered or request.cookies.get(TOKEN_COOKIE, "") or request.query.get("token", "")
        if not hmac.compare_digest(offered.encode(), token.encode()):
            raise web.HTTPUnauthorized(
                text="a token is needed: open /board?token=<MKPI_WEB_TOKEN> once, or send "
                "'Authorization: Bearer <MKPI_WEB_TOKEN>'"
            )
        response = await handler(request)
        if "token" in request.query:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        return response

    async def on_start(self) -> None:
        self._view = RedisView(redis_client(self.settings), self.settings.topics.topic_prefix)
        application = web.Application(middlewares=[self._require_token])
        application.router.add_get("/metrics", self._metrics)
        application.router.add_get("/healthz", self._live)  # the loop turns (kept for scripts)
        application.router.add_get("/livez", self._live)
        application.router.add_get("/readyz", self._ready)
        application.router.add_get("/api/kpis", self._kpis)
        application.router.add_get("/api/board", self._board)
        application.router.add_get("/board", self._board_page)
        application.router.add_get("/", self._board_page)
        self._runner = web.AppRunner(application, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.web.web_host, self.settings.web.web_port).start()

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._view is not None:
            await self._view.client.aclose()
