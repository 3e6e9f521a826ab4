"""The Redis view on the real server: the board's poll reads one campaign's series only."""

from __future__ import annotations

import msgspec
import pytest

from agents.redis.connections import redis_client
from agents.redis.view import RedisView, ViewQuery
from agents.settings import Settings
from streams.contracts.outputs import KpiKey
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
