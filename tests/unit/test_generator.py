import json
from datetime import UTC, datetime, timedelta

from streams.generator import EventFactory
from streams.validation import decode_event


def clock() -> datetime:
    return datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def test_same_seed_same_events_and_different_seed_different_events() -> None:
    first = list(EventFactory(seed=3).events(200, clock))
    assert first == list(EventFactory(seed=3).events(200, clock))
    assert first != list(EventFactory(seed=4).events(200, clock))


def test_generated_events_are_valid_and_varied() -> None:
    events = list(EventFactory(seed=1, campaigns=4).events(3000, clock))
    assert all(not hasattr(decode_event(json.dumps(e).encode(), 65536), "reason") for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    mediums = {e.get("utm", {}).get("medium") for e in events}
    assert {"organic", "cpc", "email", None} <= mediums
    campaigns = {e["utm"]["campaign"] for e in events if "campaign" in e.get("utm", {})}
    assert len(campaigns) == 4
    blog = sum(e["page"]["path"].startswith("/blog/") for e in events)
    assert 0.1 < blog / len(events) < 0.6
    assert any("referrer" in e["page"] and "utm" not in e for e in events)


def test_events_take_their_time_from_the_clock() -> None:
    times = iter(clock() + timedelta(seconds=i) for i in range(3))
    events = list(EventFactory(seed=1).events(3, lambda: next(times)))
    assert [e["occurred_at"] for e in events] == [
        "2026-11-27T10:00:00.000+00:00",
        "2026-11-27T10:00:01.000+00:00",
        "2026-11-27T10:00:02.000+00:00",
    ]
