"""The generator's messages and their labels: the labels are what integration tests trust."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from devtools.generator import DUPLICATE, VALID, Fractions, GroundTruth, Scenario
from streams.contracts.events import EVENT_TYPES
from streams.core.validation import Rejection, check_time_range, decode_event, event_time

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


def test_same_seed_same_messages_and_different_seed_different_messages() -> None:
    fractions = Fractions(duplicates=0.1, late=0.1, malformed=0.1, shuffle_window=20)
    first = list(Scenario(3, fractions=fractions).messages(500, clock))
    assert first == list(Scenario(3, fractions=fractions).messages(500, clock))
    assert first != list(Scenario(4, fractions=fractions).messages(500, clock))
    assert len(first) == 500


def test_every_label_is_what_validation_and_dedup_must_conclude() -> None:
    fractions = Fractions(duplicates=0.1, late=0.1, malformed=0.2, shuffle_window=50)
    seen: set[str] = set()
    labels: Counter[str] = Counter()
    for message in Scenario(11, fractions=fractions).messages(6000, clock):
        decoded = decode_event(message.payload, 65536)
        if isinstance(decoded, Rejection):
            verdict = decoded.reason.value
        else:
            out_of_range = check_time_range(event_time(decoded), NOW, 7 * 86400, 600)
            if out_of_range is not None:
                verdict = out_of_range.reason.value
            else:
                verdict = DUPLICATE if decoded.event_id in seen else VALID
                seen.add(decoded.event_id)
        assert verdict == message.expect, message.payload[:200]
        labels[message.expect] += 1
    expected_labels = {
        VALID,
        DUPLICATE,
        "not_json",
        "schema_violation",
        "unknown_type",
        "unsupported_schema_version",
        "too_large",
        "too_deeply_nested",
        "timestamp_out_of_range",
    }
    assert set(labels) == expected_labels
    assert 0.05 < labels[DUPLICATE] / labels[VALID] < 0.15


def test_every_event_type_appears_with_realistic_funnels() -> None:
    messages = [m for m in Scenario(5).messages(20000, clock) if m.expect == VALID]
    events = [json.loads(m.payload) for m in messages]
    kinds = Counter(e["type"] for e in events)
    assert set(kinds) == set(EVENT_TYPES)
    assert kinds["email_sent"] >= kinds["email_delivered"] > kinds["email_open"] > 0
    assert kinds["ad_impression"] > kinds["lead"] > 0
    assert kinds["page_view"] > kinds["page_engagement"]
    opens = [e for e in events if e["type"] == "email_open"]
    assert any(e["machine_open"] for e in opens) and any(not e["machine_open"] for e in opens)
    per_message = Counter(e["email"]["message_id"] for e in opens if not e["machine_open"])
    assert max(per_message.values()) > 1, "some recipients open twice"
    assert all(datetime.fromisoformat(e["occurred_at"]) <= NOW for e in events)


def test_late_journeys_are_held_back_by_their_kind_against_grace_and_retention() -> None:
    fractions = Fractions(late=0.2, revising=0.2, past_retention=0.2)
    grace, retention = 120, 1800
    scenario = Scenario(2, fractions=fractions, grace_seconds=grace, retention_seconds=retention)
    messages = [m for m in scenario.messages(6000, clock) if m.expect == VALID]
    by_kind: Counter[str] = Counter()
    for message in messages:
        age = (NOW - datetime.fromisoformat(json.loads(message.payload)["occurred_at"])).total_seconds()
        assert message.delay - 0.01 <= age <= message.delay + 240.01, (
            "a journey ends at the clock, minus its delay"
        )
        if message.delay == 0:
            by_kind["on time"] += 1
        elif message.delay <= grace:
            by_kind["late"] += 1
        elif message.delay < grace + retention - 240:
            by_kind["revising"] += 1
        else:
            assert message.delay >= grace + retention + 3600 + 240, "minute and hour windows past retention"
            by_kind["past retention"] += 1
    assert set(by_kind) == {"on time", "late", "revising", "past retention"}
    assert all(0.1 < by_kind[kind] / len(messages) < 0.3 for kind in ("late", "revising", "past retention"))
    for message in messages:  # keyed by subject: a subject's events stay in order on one partition
        event = json.loads(message.payload)
        subject = event.get("user_id") or event.get("anonymous_id") or event.get("email", {}).get("recipient")
        assert message.key == (subject or event["event_id"]).encode()


def test_ground_truth_adds_up() -> None:
    truth = GroundTruth()
    for message in Scenario(9, fractions=Fractions(duplicates=0.1, malformed=0.1)).messages(2000, clock):
        truth.add(message)
    assert truth.raw == 2000 == sum(truth.outcomes.values())
    assert truth.outcomes["bad"] == sum(truth.bad_reasons.values())
    assert truth.outcomes["valid"] == sum(truth.valid_by_type.values())


def test_channel_labels_agree_with_the_rules_for_every_generated_event() -> None:
    """The generator's hand-written channel labels and the rules file must tell the same story;
    a disagreement is a bug in one of them (integration tests trust the labels)."""
    from streams.core.attribution import ChannelRules

    rules = ChannelRules.load()
    wrong = Counter()
    for message in Scenario(8).messages(20000, clock):
        event = decode_event(message.payload, 65536)
        assert not isinstance(event, Rejection)
        actual = rules.attribute(event).channel
        if actual != message.channel:
            wrong[(message.event_type, message.channel, actual)] += 1
    assert not wrong


def test_a_share_of_one_is_allowed_as_the_message_says() -> None:
    Fractions(malformed=1.0, duplicates=1.0).validate()
    with pytest.raises(ValueError, match="--malformed must be a fraction from 0 to 1"):
        Fractions(malformed=1.01).validate()


def test_a_run_nonce_renews_every_event_id_and_keeps_the_traffic() -> None:
    start = datetime(2026, 12, 2, 10, tzinfo=UTC)

    def events(nonce: int) -> list[dict[str, object]]:
        scenario = Scenario(3, fractions=Fractions(duplicates=0.1), run_nonce=nonce)
        return [json.loads(m.payload) for m in scenario.messages(300, lambda: start)]

    same, again, fresh = events(0), events(0), events(12345)
    assert same == again, "without a nonce a seed repeats its ids"
    ids = {str(e["event_id"]) for e in same}
    assert ids.isdisjoint(str(e["event_id"]) for e in fresh)
    assert [{k: v for k, v in e.items() if k != "event_id"} for e in same] == [
        {k: v for k, v in e.items() if k != "event_id"} for e in fresh
    ]


@pytest.mark.parametrize("live", [True, False])
def test_live_traffic_is_late_only_in_the_configured_shares(live: bool) -> None:
    """With the wall clock, no share of late journeys and no shuffling, no event trails the
    newest one sent before it by more than the grace period (the first journeys ended 240 s
    in the past, so most events revised closed windows); without ``live`` many do."""
    grace = 60
    scenario = Scenario(
        5, fractions=Fractions(duplicates=0, malformed=0, shuffle_window=1), grace_seconds=grace, live=live
    )
    newest, behind = 0.0, 0
    for message in scenario.messages(3000, lambda: datetime(2026, 12, 6, 12, tzinfo=UTC)):
        event = decode_event(message.payload, 65536)
        assert not isinstance(event, Rejection)
        at = event_time(event).timestamp()
        behind += at < newest - grace
        newest = max(newest, at)
    assert (behind == 0) == live, behind
