"""The Redis view on the real server: the board's poll reads one campaign's series only, and
firing alerts stay until they resolve."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from agents.redis.connections import redis_client
from agents.redis.view import RedisView, ViewQuery
from agents.settings import Settings
from streams.contracts.outputs import AlertEvent, KpiKey
from tests.agents.redis.test_view import update
from tests.support import isolated_settings

pytestmark = pytest.mark.kafka


async def test_a_campaigns_latest_values_are_read_by_field_not_the_whole_hash(local_stack: Settings) -> None:
    settings = isolated_settings()
    client = redis_client(settings)
    view = RedisView(client, settings.topics.app_id)
    try:
        updates = [
            update(kpi, channel, campaign, 1.0, n, None)
            for n, (kpi, channel, campaign) in enumerate(
                (kpi, channel, f"campaign_{c}")
                for kpi in ("page_views", "leads")
                for channel in ("email", "direct", "*")
                for c in range(200)
            )
        ]
        start = int(updates[0].window_start.timestamp())
        await view.write(
            (KpiKey(u.kpi, 60, start, u.channel, u.campaign), msgspec.json.encode(u)) for u in updates
        )
        full_reads = lambda stats: stats.get("cmdstat_hgetall", {}).get("calls", 0)  # noqa: E731
        before = full_reads(await client.info("commandstats"))
        query = ViewQuery(60, campaign="campaign_7")
        read = await view.latest(
            query, {"page_views", "leads", "sessions"}, {"email", "direct", "social", "*"}
        )
        assert full_reads(await client.info("commandstats")) == before, "no HGETALL for one campaign"
        assert read == sorted(
            (u for u in updates if query.matches(u)), key=lambda u: (u.kpi, u.channel, u.campaign)
        )
        assert len(read) == 6
        assert len(await view.latest(ViewQuery(60))) == len(updates), "all campaigns: the whole hash"
    finally:
        await client.aclose()


async def test_firing_alerts_are_kept_until_their_incident_resolves(local_stack: Settings) -> None:
    settings = isolated_settings()
    client = redis_client(settings)
    view = RedisView(client, settings.topics.app_id)
    try:
        firing = [alert_event(kpi, "firing") for kpi in ("leads", "email_open_rate")]
        await view.write([], [msgspec.json.encode(a) for a in firing])
        assert await view.firing_alerts() == sorted(firing, key=lambda a: a.first_breach_start)
        # The same flush may carry an incident's firing and its resolution: nothing stays.
        late = alert_event("shares", "firing")
        resolved = [alert_event("leads", "resolved"), late, alert_event("shares", "resolved")]
        await view.write([], [msgspec.json.encode(a) for a in resolved])
        assert [a.kpi for a in await view.firing_alerts()] == ["email_open_rate"]
    finally:
        await client.aclose()


def alert_event(kpi: str, status: str) -> AlertEvent:
    at = datetime(2026, 12, 1, len(kpi) % 24, tzinfo=UTC)
    return AlertEvent(
        schema_version="1-0-0",
        incident_id=f"incident-{kpi}",
        status=status,  # type: ignore[arg-type]
        rule=f"{kpi}-drop",
        severity="warning",
        cause="kpi_fell",
        detail="fell",
        kpi=kpi,
        window_seconds=3600,
        window_start=at,
        first_breach_start=at,
        scope="overall",
        channel="*",
        campaign="*",
        value=1.0,
        baseline=2.0,
        breached_windows=1,
        emitted_at=at,
    )
