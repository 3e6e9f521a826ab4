"""Sessions as GA4 counts them, on journeys built by hand, through the batch ingestor."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.contracts.deltas import ALL
from streams.core.ingestor import BatchIngestor
from tests.streams.core.test_ingestor import count, ingestor, record

START = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
HOUR = 3600


def site_event(kind: str, minute: float, event_id: str, **fields: Any) -> bytes:
    event: dict[str, Any] = {
        "type": kind,
        "schema_version": "1-0-0",
        "event_id": event_id,
        "occurred_at": (START + timedelta(minutes=minute)).isoformat(),
        "anonymous_id": "visitor-1",
        "page": {"path": "/pricing", "referrer": "https://shop.example.com/"},
        **fields,
    }
    if kind == "lead":
        event["lead"] = {"form_id": "contact"}
    return json.dumps(event).encode()


def hour_cells(ingest: BatchIngestor, events: list[bytes]) -> dict[tuple[str, str], dict[str, int]]:
    """Feed ``events`` one batch each, in order, and return the hour window's published cells."""
    for offset, payload in enumerate(events):
        count(ingest, ingest.screen([record(0, offset, payload)]))
    return {(d.channel, d.campaign): d.measures for d in ingest.take().deltas if d.window_seconds == HOUR}


def site() -> BatchIngestor:
    return ingestor(MKPI_SITE_DOMAINS="shop.example.com", MKPI_WINDOW_SIZES="60,3600")


def test_an_organic_visit_keeps_its_channel_for_internal_pages_and_the_lead() -> None:
    landing = {"path": "/", "referrer": "https://www.google.com/search?q=crm"}
    journey = [
        site_event("page_view", 0, "p1", session_id="s1", page=landing),
        site_event("page_view", 1, "p2", session_id="s1"),  # internal referrer: no touch
        site_event("page_view", 2, "p3", session_id="s1"),
        site_event("lead", 3, "l1", session_id="s1"),
    ]
    cells = hour_cells(site(), journey)
    assert cells[("organic_search", ALL)] == {
        "sessions": 1,
        "organic_sessions": 1,
        "page_views": 3,
        "organic_page_views": 3,
        "leads": 1,
        "lead_value_cents": 0,
    }
    assert cells[(ALL, ALL)] == cells[("organic_search", ALL)], "one channel: it adds up to the total"
    assert ("direct", ALL) not in cells


def test_without_session_ids_31_minutes_of_inactivity_start_a_new_session() -> None:
    landing = {"path": "/", "referrer": "https://news.example.net/story"}
    journey = [
        site_event("page_view", 0, "p1", page=landing),
        site_event("page_view", 10, "p2"),
        site_event("page_view", 41, "p3"),  # 31 minutes after p2
        site_event("lead", 42, "l1"),
    ]
    cells = hour_cells(site(), journey)
    assert cells[(ALL, ALL)]["sessions"] == 2
    assert cells[("referral", ALL)] == {"sessions": 1, "page_views": 2}
    assert cells[("direct", ALL)] == {"sessions": 1, "page_views": 1, "leads": 1, "lead_value_cents": 0}


def test_without_session_ids_a_new_campaign_touch_starts_a_new_session() -> None:
    campaign = {"source": "newsletter", "medium": "email", "campaign": "winter"}
    journey = [
        site_event("page_view", 0, "p1", page={"path": "/", "referrer": "https://www.bing.com/"}),
        site_event("page_view", 5, "p2"),
        site_event("page_view", 9, "p3", utm=campaign),  # a campaign link, mid-visit
        site_event("page_view", 12, "p4"),
        site_event("lead", 13, "l1"),
    ]
    cells = hour_cells(site(), journey)
    assert cells[("organic_search", ALL)]["sessions"] == 1
    assert cells[("organic_search", ALL)]["page_views"] == 2
    assert cells[("email", "winter")] == {"sessions": 1, "page_views": 2, "leads": 1, "lead_value_cents": 0}
    assert cells[(ALL, ALL)]["sessions"] == 2


def test_a_client_session_keeps_its_channel_through_a_campaign_touch() -> None:
    """The client's session id says it is one session; its channel is its start's (GA4's
    session default channel group)."""
    campaign = {"source": "google", "medium": "cpc", "campaign": "brand"}
    journey = [
        site_event("page_view", 0, "p1", session_id="s9"),  # typed the address: direct
        site_event("page_view", 2, "p2", session_id="s9", utm=campaign),
    ]
    cells = hour_cells(site(), journey)
    assert cells[("direct", ALL)] == {"sessions": 1, "page_views": 2}
    assert ("paid_search", ALL) not in cells


def test_late_and_out_of_order_events_join_the_session_they_fall_in() -> None:
    journey = [
        site_event("page_view", 20, "p2"),
        site_event("page_view", 0, "p1"),  # 20 minutes earlier, read later: same session
        site_event("page_view", 45, "p3"),  # within 30 minutes of p2
        site_event("page_view", 80, "p4"),  # 35 minutes after p3: a new session
    ]
    ingest = ingestor(MKPI_WINDOW_SIZES="86400")
    for offset, payload in enumerate(journey):
        count(ingest, ingest.screen([record(0, offset, payload)]))
    overall = next(d.measures for d in ingest.take().deltas if (d.channel, d.campaign) == (ALL, ALL))
    assert overall == {"sessions": 2, "page_views": 4}


def test_channels_add_up_to_the_total_on_random_journeys() -> None:
    """For sessions, page views and leads, a window's channels add up to its all-channel
    value, and its campaigns' channels (the drill-down) to the campaign's value."""
    rng = random.Random(7)
    touches = [
        {"page": {"path": "/", "referrer": "https://www.google.com/"}},
        {"utm": {"source": "facebook", "medium": "cpc", "campaign": "c1"}},
        {"utm": {"source": "newsletter", "medium": "email", "campaign": "c2"}},
        {},
    ]
    events = []
    for visit in range(300):
        at = rng.uniform(0, 120)
        ids: dict[str, Any] = {"anonymous_id": f"v{rng.randrange(40)}"}
        if rng.random() < 0.5:
            ids["session_id"] = f"s{visit}"
        for step in range(rng.randint(1, 4)):
            extra = rng.choice(touches) if step == 0 or rng.random() < 0.2 else {}
            kind = "lead" if rng.random() < 0.1 else "page_view"
            events.append(site_event(kind, at + step, f"e{visit}-{step}", **ids, **extra))
    rng.shuffle(events)
    ingest = site()
    count(ingest, ingest.screen([record(0, i, e) for i, e in enumerate(events)]))
    by_window: dict[tuple[int, int], dict[tuple[str, str], dict[str, int]]] = {}
    for d in ingest.take().deltas:
        by_window.setdefault((d.window_seconds, d.window_start), {})[(d.channel, d.campaign)] = d.measures
    assert by_window
    for cells in by_window.values():
        for measure in ("sessions", "page_views", "leads"):
            total = cells.get((ALL, ALL), {}).get(measure, 0)
            channels = Counter({c: m.get(measure, 0) for (c, k), m in cells.items() if c != ALL and k == ALL})
            assert sum(channels.values()) == total, measure
            for campaign in {k for (c, k) in cells if c == ALL and k != ALL}:
                split = sum(m.get(measure, 0) for (c, k), m in cells.items() if c != ALL and k == campaign)
                assert split == cells[(ALL, campaign)].get(measure, 0), (measure, campaign)


def test_events_without_the_session_id_join_the_client_session_they_fall_in() -> None:
    """An engagement event sent without the session id (either read first) is in the visit."""
    organic = {"path": "/", "referrer": "https://www.google.com/"}
    view = site_event("page_view", 0, "p1", session_id="s1", page=organic)
    engagement = site_event("page_engagement", 1, "g1", engaged_ms=4000, page=organic)
    for journey in ([view, engagement], [engagement, view]):
        cells = hour_cells(site(), journey)
        assert cells[(ALL, ALL)]["sessions"] == 1
        assert cells[("organic_search", ALL)] == {
            "sessions": 1,
            "organic_sessions": 1,
            "page_views": 1,
            "organic_page_views": 1,
            "engagements": 1,
            "engaged_ms": 4000,
        }
