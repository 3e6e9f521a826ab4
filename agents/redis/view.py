"""The Redis view: the newest value of every KPI series, for queries and the live board.

Layout (``<prefix>`` is MKPI_TOPIC_PREFIX):
- ``<prefix>:latest:<window_seconds>`` hash: field ``kpi|channel|campaign`` -> KPI update JSON
  of the newest window seen for that series;
- ``<prefix>:window:<window_seconds>:<window_start>`` hash: the same fields for one window,
  kept for ``HISTORY_SECONDS`` (sparklines, the comparison with a week before);
- ``<prefix>:alerts:firing`` hash: incident id -> alert event JSON of each firing drop alert,
  removed when its ``resolved`` event comes.
A series lives on one partition of the delta topic, so one worker writes it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from agents.redis.waiting import until_redis_answers
from streams.contracts.deltas import ALL_TIME
from streams.contracts.outputs import AlertEvent, KpiKey, KpiUpdate
from streams.core.emission import Emission

#: A week and a day: the board compares a window with the same one a week before.
HISTORY_SECONDS = 8 * 86400
FIELD_SEPARATOR = "|"

_update_decoder = msgspec.json.Decoder(KpiUpdate)
_alert_decoder = msgspec.json.Decoder(AlertEvent)


def series_field(key: KpiKey) -> str:
    return FIELD_SEPARATOR.join((key.kpi, key.channel, key.campaign))


@dataclass(frozen=True, slots=True)
class ViewQuery:
    """Filters of a query; None matches everything."""

    window_seconds: int
    kpi: str | None = None
    channel: str | None = None
    campaign: str | None = None

    def matches(self, update: KpiUpdate) -> bool:
        return all(
            wanted is None or wanted == actual
            for wanted, actual in (
                (self.kpi, update.kpi),
                (self.channel, update.channel),
                (self.campaign, update.campaign),
            )
        )


class RedisView:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._newest: dict[tuple[str, int, str, str], int] = {}

    def _latest_key(self, window_seconds: int) -> str:
        return f"{self.prefix}:latest:{window_seconds}"

    @property
    def _alerts_key(self) -> str:
        return f"{self.prefix}:alerts:firing"

    async def write(self, updates: Iterable[tuple[KpiKey, bytes]], alerts: Iterable[bytes] = ()) -> None:
        """Store encoded KPI updates and alert events in one round trip: one HSET per window
        and one per window size's latest values, whatever the number of updates."""
        windows: defaultdict[str, dict[str, bytes]] = defaultdict(dict)
        latest: defaultdict[str, dict[str, bytes]] = defaultdict(dict)
        for key, body in updates:
            field = series_field(key)
            windows[f"{self.prefix}:window:{key.window_seconds}:{key.window_start}"][field] = body
            series = (key.kpi, key.window_seconds, key.channel, key.campaign)
            if key.window_start >= self._newest.get(series, key.window_start):
                self._newest[series] = key.window_start
                latest[self._latest_key(key.window_seconds)][field] = body
        firing: dict[str, bytes] = {}
        resolved: list[str] = []
        for body in alerts:
            event = _alert_decoder.decode(body)
            if event.status == "firing":
                firing[event.incident_id] = body
            else:
                firing.pop(event.incident_id, None)
                resolved.append(event.incident_id)
        if not windows and not firing and not resolved:
            return
        pipe = self.client.pipeline(transaction=False)
        if resolved:
            pipe.hdel(self._alerts_key, *resolved)
        if firing:
            pipe.hset(self._alerts_key, mapping=firing)  # type: ignore[arg-type]
        for window_key, fields in windows.items():
            pipe.hset(window_key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(window_key, HISTORY_SECONDS)
        for latest_key, fields in latest.items():
            pipe.hset(latest_key, mapping=fields)  # type: ignore[arg-type]
        await pipe.execute()

    async def window_values(
        self, window_seconds: int, starts: list[int], fields: list[str]
    ) -> dict[int, list[KpiUpdate]]:
        """The values of the series ``fields`` in each window of ``starts``, in one round trip."""
        if not fields:
            return {start: [] for start in starts}
        pipe = self.client.pipeline(transaction=False)
        for start in starts:
            pipe.hmget(f"{self.prefix}:window:{window_seconds}:{start}", fields)
        replies = await pipe.execute()
        return {
            start: [_update_decoder.decode(body) for body in bodies if body is not None]
            for start, bodies in zip(starts, replies, strict=True)
        }

    async def firing_alerts(self) -> list[AlertEvent]:
        """The drop alerts firing now (few: one per open incident)."""
        bodies = (await self.client.hgetall(self._alerts_key)).values()
        return sorted((_alert_decoder.decode(b) for b in bodies), key=lambda a: a.first_breach_start)

    async def latest(
        self, query: ViewQuery, kpis: Iterable[str] = (), channels: Iterable[str] = ()
    ) -> list[KpiUpdate]:
        """The newest value of each series the query matches. A query of one campaign, given
        the ``kpis`` and ``channels`` there can be, reads just those series (HMGET); otherwise
        the window size's whole hash, which holds every campaign's series."""
        key = self._latest_key(query.window_seconds)
        if query.campaign is not None and kpis and channels:
            fields = [
                FIELD_SEPARATOR.join((kpi, channel, query.campaign))
                for kpi in ((query.kpi,) if query.kpi else sorted(kpis))
                for channel in ((query.channel,) if query.channel else sorted(channels))
            ]
            bodies = [body for body in await self.client.hmget(key, fields) if body is not None]
        else:
            bodies = list((await self.client.hgetall(key)).values())
        updates = [_update_decoder.decode(body) for body in bodies]
        return sorted((u for u in updates if query.matches(u)), key=lambda u: (u.kpi, u.channel, u.campaign))


class RedisViewSink:
    """The view as the KPI agent's sink (``streams.core.emission``): waits out a Redis outage."""

    def __init__(self, view: RedisView, redis_up: Gauge, failures: Counter) -> None:
        self.view = view
        self.redis_up = redis_up
        self.failures = failures

    async def emit(self, emission: Emission) -> None:
        updates = [(encoded.key, encoded.body) for encoded in emission.updates]
        alerts = [body for _, body in emission.alerts]
        if not updates and not alerts:
            return
        await until_redis_answers(
            lambda: self.view.write(updates, alerts), "the Redis view", self.redis_up, self.failures
        )


def render_table(updates: list[KpiUpdate]) -> str:
    """A plain-text table for people."""
    if not updates:
        return "no KPI values match"
    rows = [("kpi", "channel", "campaign", "window start (UTC)", "value", "numerator", "denominator")]
    for u in updates:
        value = (
            "-" if u.value is None else (f"{u.value:.4g}" if u.denominator is not None else f"{u.value:g}")
        )
        rows.append(
            (
                u.kpi,
                u.channel,
                u.campaign,
                "running total"
                if u.window_seconds == ALL_TIME
                else u.window_start.strftime("%Y-%m-%d %H:%M"),
                value,
                str(u.numerator),
                "" if u.denominator is None else str(u.denominator),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
