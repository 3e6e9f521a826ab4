"""Realistic raw marketing events, deterministic for a seed, with the answers they must give.

``Scenario`` is pure: for a seed and a clock it yields the same messages every time, each
labelled with what the pipeline must make of it (valid, duplicate, or a bad row with its
reason), and keeps that ground truth. ``produce_messages`` sends them to the raw topic at a
target rate, draws a progress bar and returns the truth.

Journeys follow marketing funnels: ad impression -> click -> landing page view -> lead;
email sent -> delivered -> open (some machine opens, some repeated) -> click -> page view;
organic and social visits with engagement; social impressions, shares, follows, video
channel subscriptions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

import msgspec
from aiokafka import AIOKafkaProducer

from agents.kafka.connections import kafka_options
from agents.settings import Settings
from streams.core.subjects import subject_of

VALID = "valid"
DUPLICATE = "duplicate"

# The channel each source must be attributed to is written here by hand from GA4's published
# channel definitions, independently of streams/core/channel_rules.toml, so tests can compare.
#: (utm source, utm medium, referrer, expected channel, weight) of website visits.
VISIT_SOURCES: tuple[tuple[str | None, str | None, str | None, str, int], ...] = (
    ("google", "organic", "https://www.google.com/", "organic_search", 22),
    (None, None, "https://www.google.com/search?q=crm", "organic_search", 10),
    (None, None, "https://www.bing.com/", "organic_search", 4),
    ("duckduckgo", "organic", "https://duckduckgo.com/", "organic_search", 2),
    ("facebook", "social", "https://m.facebook.com/", "organic_social", 6),
    ("youtube", "video", "https://www.youtube.com/", "organic_video", 3),
    ("partner-blog", "referral", "https://partner.example.org/post", "referral", 4),
    (None, None, "https://news.example.net/article", "referral", 4),
    (None, None, None, "direct", 14),
    ("mystery", "carrier-pigeon", None, "unassigned", 2),
)
#: (utm source, utm medium, ad placement, expected channel, weight) of paid campaigns.
AD_SOURCES: tuple[tuple[str, str, str, str, int], ...] = (
    ("google", "cpc", "search", "paid_search", 10),
    ("bing", "ppc", "search", "paid_search", 3),
    ("linkedin", "paid_social", "social", "paid_social", 4),
    ("adnetwork", "display", "display", "display", 4),
    ("youtube", "cpv", "video", "paid_video", 2),
)
CHANNEL_LABEL = "_expected_channel"  # carried on generated events until they are serialized
DELAY_LABEL = "_delay_seconds"  # likewise: how long a late journey was held back
BAD_LABEL = "_expected_bad_row"  # likewise, on an event sent broken: the reason it must get
JOURNEY_SPAN = 240  # seconds from a journey's first step to its last
CAMPAIGNS = ("spring_sale", "black_friday", "webinar_q4", "brand", "retargeting_cart", "launch_v2")
PAGES = (
    ("/", "Home", 20),
    ("/pricing", "Pricing", 10),
    ("/features", "Features", 8),
    ("/blog/", "Blog", 6),
    ("/blog/kpis-that-matter", "KPIs that matter", 8),
    ("/blog/email-open-rates", "Email open rates", 6),
    ("/blog/seo-basics", "SEO basics", 5),
    ("/docs/getting-started", "Getting started", 5),
    ("/contact", "Contact", 3),
)
NETWORKS = ("linkedin", "instagram", "facebook", "x")
MACHINE_OPEN_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
HUMAN_OPEN_AGENT = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
JOURNEY_WEIGHTS = {"visit": 45, "ad": 20, "email": 20, "social": 15}


@dataclass(frozen=True, slots=True)
class Message:
    """One raw Kafka message and what the pipeline must make of it."""

    payload: bytes
    expect: str  # VALID, DUPLICATE, or a bad-row reason
    event_type: str | None = None
    channel: str | None = None  # the channel a valid event must be attributed to
    #: Kafka message key: the event's subject (``producer_key``), so a subject's events and an
    #: event's retries share a raw partition.
    key: bytes | None = None
    #: Seconds the journey was held back (0: on time); see ``Fractions``.
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Fractions:
    """Shares of journeys that arrive late, of events resent (client retries) and of
    malformed messages.

    Late journeys come in three kinds, by how long they are held back against the scenario's
    grace and retention: ``late`` within the grace period (counted in the final result),
    ``revising`` after their windows closed but within retention (each correction is a
    revision), ``past_retention`` long after (counted as late in minute and hour windows).
    """

    duplicates: float = 0.0
    late: float = 0.0
    malformed: float = 0.0
    shuffle_window: int = 1
    revising: float = 0.0
    past_retention: float = 0.0

    def validate(self) -> None:
        for name in ("duplicates", "malformed", "late", "revising", "past_retention"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a fraction from 0 to 1")
        if self.late + self.revising + self.past_retention >= 1:
            raise ValueError("--late, --revising and --past-retention must add up to less than 1")
        if self.shuffle_window < 1:
            raise ValueError("--shuffle must be at least 1")


@dataclass
class GroundTruth:
    """What the pipeline must report for the messages produced so far."""

    raw: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    bad_reasons: Counter[str] = field(default_factory=Counter)
    valid_by_type: Counter[str] = field(default_factory=Counter)

    def add(self, message: Message) -> None:
        self.raw += 1
        if message.expect == VALID:
            self.outcomes["valid"] += 1
            self.valid_by_type[message.event_type or "?"] += 1
        elif message.expect == DUPLICATE:
            self.outcomes["duplicate"] += 1
        else:
            self.outcomes["bad"] += 1
            self.bad_reasons[message.expect] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "outcomes": dict(self.outcomes),
            "bad_reasons": dict(self.bad_reasons),
            "valid_by_type": dict(self.valid_by_type),
        }

    def render(self) -> str:
        lines = [
            f"produced {self.raw} messages: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        ]
        lines += [f"  {name:<18} {count}" for name, count in sorted(self.valid_by_type.items())]
        if self.bad_reasons:
            lines.append(
                "  bad rows expected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.bad_reasons.items()))
            )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class OpenDip:
    """For the emails of one campaign sent from ``begins`` until ``ends``: opens fall to
    ``share_kept`` of their usual rate (0.4: down 60%), or, when ``broken``, keep their rate but
    every one arrives broken (``machine_open`` as a string), a bad row: tracking broke."""

    campaign: str
    begins: datetime
    ends: datetime
    share_kept: float = 1.0
    broken: bool = False

    def applies(self, campaign: str, sent_at: datetime) -> bool:
        return campaign == self.campaign and self.begins <= sent_at < self.ends


class Scenario:
    """Journeys of a fixed population, plus retries, late arrivals and malformed messages."""

    def __init__(
        self,
        seed: int,
        campaigns: int = len(CAMPAIGNS),
        fractions: Fractions | None = None,
        visitors: int = 5000,
        grace_seconds: int | None = None,
        retention_seconds: int | None = None,
        journey_weights: dict[str, int] | None = None,
        open_dip: OpenDip | None = None,
        run_nonce: int = 0,
        live: bool = False,
    ) -> None:
        """``grace_seconds`` and ``retention_seconds`` (default: the settings' defaults) should
        match the worker's, so that late journeys land where ``Fractions`` says they do.
        ``run_nonce`` changes every event id and nothing else: the same seed with another nonce
        is the same traffic as new events, not as retries the worker drops. ``live`` is for a
        clock that is the wall clock: a journey is sent when it ends, so its steps are pressed
        into half the grace period, and only the late shares of ``Fractions`` arrive late."""
        self.random = random.Random(seed)
        self.live = live
        self.run_nonce = run_nonce
        self.journey_weights = journey_weights or JOURNEY_WEIGHTS
        self.open_dip = open_dip
        self.fractions = fractions or Fractions()
        self.fractions.validate()
        defaults = Settings()
        self.grace_seconds = defaults.windows.grace_seconds if grace_seconds is None else grace_seconds
        self.retention_seconds = (
            defaults.windows.window_retention_seconds if retention_seconds is None else retention_seconds
        )
        if self.fractions.revising and self.retention_seconds < JOURNEY_SPAN + 300:
            raise ValueError(f"--revising needs a retention of at least {JOURNEY_SPAN + 300} seconds")
        extra = (f"campaign_{i:03d}" for i in range(len(CAMPAIGNS), campaigns))
        self.campaigns = [*CAMPAIGNS, *extra][:campaigns]
        self.visitors = [uuid.UUID(int=self.random.getrandbits(128)).hex[:16] for _ in range(visitors)]
        self.recipients = [f"reader{i}@example.com" for i in range(visitors)]

    # -- building blocks -------------------------------------------------------------------
    def _id(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128) ^ self.run_nonce, version=4))

    def _base(self, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
        event = {
            "type": kind,
            "schema_version": "1-0-0",
            "event_id": self._id(),
            "occurred_at": at.isoformat(timespec="milliseconds"),
        }
        event.update({k: v for k, v in fields.items() if v is not None})
        return event

    def probe(self, campaign: str, at: datetime) -> bytes:
        """One valid page view of a campaign of its own: the benchmark times how long it takes
        to show on the KPI update topic."""
        utm = {"source": "bench", "medium": "probe", "campaign": campaign}
        visitor = self.random.choice(self.visitors)
        event = self._base(
            "page_view",
            at,
            page=self._page(path="/"),
            anonymous_id=visitor,
            session_id=f"{visitor}-probe",
            utm=utm,
        )
        return json.dumps(event, separators=(",", ":")).encode()

    def _weighted(self, options: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
        return self.random.choices(options, [option[-1] for option in options])[0]

    def _page(self, referrer: str | None = None, path: str | None = None) -> dict[str, Any]:
        chosen_path, title, _ = self._weighted(PAGES) if path is None else (path, None, 0)
        page: dict[str, Any] = {"path": chosen_path, "url": f"https://shop.example.com{chosen_path}"}
        if title:
            page["title"] = title
        if referrer:
            page["referrer"] = referrer
        return page

    def _visit(
        self, at: datetime, visitor: str, utm: dict[str, str] | None, referrer: str | None
    ) -> list[dict[str, Any]]:
        """A session of page views (with engagement), sometimes ending in a lead."""
        session = f"{visitor}-{at:%Y%m%d%H%M}"
        ids = {"anonymous_id": visitor, "session_id": session, "utm": utm}
        events = []
        for step in range(self.random.choice((1, 1, 1, 2, 3))):
            page = self._page(referrer if step == 0 else None)
            view_at = at + timedelta(seconds=20 * step)
            events.append(self._base("page_view", view_at, page=page, **ids))
            if self.random.random() < 0.6:
                engaged = self.random.randint(2_000, 180_000)
                events.append(
                    self._base(
                        "page_engagement",
                        view_at + timedelta(seconds=5),
                        page=page,
                        engaged_ms=engaged,
                        **ids,
                    )
                )
        if self.random.random() < 0.08:
            lead: dict[str, Any] = {"form_id": "contact-sales", "email": self.random.choice(self.recipients)}
            if self.random.random() < 0.5:
                lead |= {"value": float(self.random.choice((500, 1200, 5000))), "currency": "EUR"}
            events.append(
                self._base(
                    "lead", at + timedelta(seconds=70), page=self._page(path="/contact"), lead=lead, **ids
                )
            )
        if not (utm and (utm.get("source") or utm.get("medium"))):
            # The label is the event's own channel: a later page of a visit that came by a bare
            # referrer has neither a utm source/medium nor an external referrer, so on its own it
            # is direct. Counted, it takes its session's channel (tests derive that themselves).
            for event in events:
                if not event.get("page", {}).get("referrer"):
                    event[CHANNEL_LABEL] = "direct"
        return events

    def _journey_visit(self, at: datetime) -> list[dict[str, Any]]:
        source, medium, referrer, channel, _ = self._weighted(VISIT_SOURCES)
        utm = {k: v for k, v in (("source", source), ("medium", medium)) if v}
        if utm and (medium not in ("organic", None) or self.random.random() < 0.3):
            utm["campaign"] = self.random.choice(self.campaigns)
        return _labelled(self._visit(at, self.random.choice(self.visitors), utm or None, referrer), channel)

    def _journey_ad(self, at: datetime) -> list[dict[str, Any]]:
        source, medium, placement, channel, _ = self._weighted(AD_SOURCES)
        utm = {"source": source, "medium": medium, "campaign": self.random.choice(self.campaigns)}
        visitor = self.random.choice(self.visitors)
        ad = {"placement": placement, "ad_id": f"ad-{self.random.randrange(40)}", "network": source}
        events = [self._base("ad_impression", at, anonymous_id=visitor, utm=utm, ad=ad)]
        if self.random.random() < 0.2:
            events.append(
                self._base("click", at + timedelta(seconds=3), anonymous_id=visitor, utm=utm, ad=ad)
            )
            events += self._visit(at + timedelta(seconds=5), visitor, utm, f"https://{source}.com/")
        return _labelled(events, channel)

    def _journey_email(self, at: datetime) -> list[dict[str, Any]]:
        utm = {"source": "newsletter", "medium": "email", "campaign": self.random.choice(self.campaigns)}
        email = {
            "message_id": f"msg-{self._id()[:13]}",
            "recipient": self.random.choice(self.recipients),
            "list_id": "weekly",
        }
        events = [self._base("email_sent", at, utm=utm, email=email)]
        if self.random.random() < 0.03:
            return _labelled(events, "email")  # bounced
        events.append(self._base("email_delivered", at + timedelta(seconds=2), utm=utm, email=email))
        dip = self.open_dip if self.open_dip and self.open_dip.applies(utm["campaign"], at) else None
        opens = dip.share_kept if dip else 1.0
        broken = {BAD_LABEL: "schema_violation"} if dip and dip.broken else {}
        if self.random.random() < 0.12 * opens:
            machine = self._base(
                "email_open",
                at + timedelta(seconds=4),
                utm=utm,
                email=email,
                machine_open=True,
                user_agent=MACHINE_OPEN_AGENT,
            )
            events.append(machine | broken | ({"machine_open": "yes"} if broken else {}))
        if self.random.random() < 0.3 * opens:
            for repeat in range(self.random.choice((1, 1, 2))):
                open_at = at + timedelta(seconds=60 + 30 * repeat)
                human = self._base(
                    "email_open",
                    open_at,
                    utm=utm,
                    email=email,
                    machine_open=False,
                    user_agent=HUMAN_OPEN_AGENT,
                )
                events.append(human | broken | ({"machine_open": "no"} if broken else {}))
            if self.random.random() < 0.15:
                events.append(
                    self._base(
                        "click",
                        at + timedelta(seconds=120),
                        utm=utm,
                        email=email,
                        target_url="https://shop.example.com/deals",
                    )
                )
                events += self._visit(
                    at + timedelta(seconds=125), self.random.choice(self.visitors), utm, None
                )
        return _labelled(events, "email")

    def _journey_social(self, at: datetime) -> list[dict[str, Any]]:
        network = self.random.choice(NETWORKS)
        paid = self.random.random() < 0.25
        utm = {"campaign": self.random.choice(self.campaigns)} if paid or self.random.random() < 0.3 else None
        social = {"network": network, "post_id": f"post-{self.random.randrange(30)}", "paid": paid}
        events = [
            self._base("post_impression", at, social=social, utm=utm)
            for _ in range(self.random.randint(1, 4))
        ]
        roll = self.random.random()
        account = {"network": network, "account_id": "acme"}
        if roll < 0.08:
            events.append(self._base("share", at + timedelta(seconds=2), social=social, utm=utm))
        elif roll < 0.14:
            events.append(self._base("follow", at + timedelta(seconds=3), social=account))
        elif roll < 0.16:
            events.append(self._base("unfollow", at + timedelta(seconds=3), social=account))
        elif roll < 0.21:
            events.append(
                self._base(
                    "subscribe",
                    at + timedelta(seconds=3),
                    social={"network": "youtube", "account_id": "acme-channel"},
                )
            )
        elif roll < 0.22:
            events.append(
                self._base(
                    "unsubscribe",
                    at + timedelta(seconds=3),
                    social={"network": "youtube", "account_id": "acme-channel"},
                )
            )
        elif roll < 0.3:
            events.append(self._base("click", at + timedelta(seconds=2), social=social, utm=utm))
            # The visit carries no utm source or medium: a social referrer makes it organic social.
            visit = self._visit(
                at + timedelta(seconds=4), self.random.choice(self.visitors), utm, f"https://{network}.com/"
            )
            events += _labelled(visit, "organic_social")
        for event in events:
            if event["type"] in ("subscribe", "unsubscribe"):
                event.setdefault(CHANNEL_LABEL, "organic_video")
            elif event["type"] in ("follow", "unfollow"):
                event.setdefault(CHANNEL_LABEL, "organic_social")
        return _labelled(events, "paid_social" if paid else "organic_social")

    def _malformed(self, now: datetime) -> Message:
        """One broken message, and the reason the pipeline must give for it."""
        good = self._base("page_view", now, page=self._page(), anonymous_id=self.random.choice(self.visitors))
        kind = self.random.randrange(12)
        if kind == 0:  # binary noise; the leading byte can start no JSON value
            noise = bytes(self.random.getrandbits(8) for _ in range(self.random.randint(1, 300)))
            return Message(b"\xfe" + noise, "not_json")
        if kind == 1:
            text = json.dumps(good).encode()
            return Message(text[: self.random.randint(0, len(text) - 1)], "not_json")
        if kind == 2:
            return Message(b"", "not_json")
        if kind == 3:
            return Message(
                json.dumps(good).encode().replace(b'"page_view"', b'"page_view\xc3\x28"'), "not_json"
            )
        if kind == 4:
            return Message(
                json.dumps(good | {"event_id": self.random.randint(1, 10**9)}).encode(), "schema_violation"
            )
        if kind == 5:
            return Message(
                json.dumps({k: v for k, v in good.items() if k != "occurred_at"}).encode(), "schema_violation"
            )
        if kind == 6:
            return Message(
                json.dumps(good | {"occurred_at": "2026-11-27 10:00"}).encode(), "schema_violation"
            )
        if kind == 7:
            return Message(
                json.dumps(good | {"type": self.random.choice(("purchase", "page_vue", "signup"))}).encode(),
                "unknown_type",
            )
        if kind == 8:
            return Message(
                json.dumps(good | {"schema_version": "2-0-0"}).encode(), "unsupported_schema_version"
            )
        if kind == 9:
            return Message(
                json.dumps(good | {"page": {"path": "/", "title": "x" * 70_000}}).encode(), "too_large"
            )
        if kind == 10:
            depth = self.random.randint(1_100, 3_000)
            return Message(
                b'{"type":"page_view","extra":' + b"[" * depth + b"]" * depth + b"}", "too_deeply_nested"
            )
        when = now + timedelta(days=self.random.choice((-30, 2)))
        return Message(
            json.dumps(good | {"occurred_at": when.isoformat()}).encode(), "timestamp_out_of_range"
        )

    # -- the stream ------------------------------------------------------------------------
    def _journey(self, now: datetime) -> list[dict[str, Any]]:
        kind = self.random.choices(list(self.journey_weights), list(self.journey_weights.values()))[0]
        start = now - timedelta(seconds=JOURNEY_SPAN)  # journeys end now
        journeys: dict[str, Callable[[datetime], list[dict[str, Any]]]] = {
            "visit": self._journey_visit,
            "ad": self._journey_ad,
            "email": self._journey_email,
            "social": self._journey_social,
        }
        events = journeys[kind](start)
        if self.live:
            # Sent all at once, now: steps older than the grace period would all be late.
            squeeze = min(1.0, self.grace_seconds / 2 / JOURNEY_SPAN)
            for event in events:
                age = (now - datetime.fromisoformat(event["occurred_at"])) * squeeze
                event["occurred_at"] = (now - age).isoformat(timespec="milliseconds")
        delay = self._delay()
        if delay:
            for event in events:
                shifted = datetime.fromisoformat(event["occurred_at"]) - timedelta(seconds=delay)
                event["occurred_at"] = shifted.isoformat(timespec="milliseconds")
                event[DELAY_LABEL] = delay
        return events

    def _delay(self) -> float:
        """Seconds to hold a journey back, by the kind of lateness drawn (0: on time)."""
        grace, retention = self.grace_seconds, self.retention_seconds
        draw, shares = self.random.random(), self.fractions
        if draw < shares.late:
            return round(self.random.uniform(1, max(1, grace)), 3)
        draw -= shares.late
        if draw < shares.revising:
            # closed windows, but every window size still within retention: the journey spans
            # up to JOURNEY_SPAN seconds, and a partition may be a little ahead of the clock
            return round(self.random.uniform(grace + 30, grace + retention - JOURNEY_SPAN - 120), 3)
        draw -= shares.revising
        if draw < shares.past_retention:
            # every minute and hour window past retention; day windows depend on the hour
            least = grace + retention + 3600 + JOURNEY_SPAN + 600
            return round(self.random.uniform(least, least + 7200), 3)
        return 0.0

    def _groups(self, clock: Callable[[], datetime]) -> Iterator[list[Message]]:
        """One journey with its client retries, or one malformed message, at a time."""
        while True:
            now = clock()
            if self.random.random() < self.fractions.malformed:
                yield [self._malformed(now)]
                continue
            group = []
            for event in self._journey(now):
                channel = event.pop(CHANNEL_LABEL)
                delay = event.pop(DELAY_LABEL, 0.0)
                expect = event.pop(BAD_LABEL, VALID)
                payload = json.dumps(event, separators=(",", ":")).encode()
                key = producer_key(event)
                group.append(Message(payload, expect, event["type"], channel, key, delay))
                if self.random.random() < self.fractions.duplicates:
                    if self.random.random() < 0.5:
                        retry = payload  # the same bytes resent
                    else:
                        retry = json.dumps(event | {"sent_at": now.isoformat()}).encode()
                    # a retried bad row is a bad row again: only valid events are deduplicated
                    again = DUPLICATE if expect == VALID else expect
                    group.append(Message(retry, again, event["type"], channel, key, delay))
            yield group

    def messages(self, count: int | None, clock: Callable[[], datetime]) -> Iterator[Message]:
        """``count`` messages (None: endless), shuffled within windows of whole journeys, so an
        event and its retries are always shuffled together."""
        produced = 0
        groups = self._groups(clock)
        while count is None or produced < count:
            buffer: list[Message] = []
            while len(buffer) < self.fractions.shuffle_window:
                buffer.extend(next(groups))
            self.random.shuffle(buffer)
            for message in _first_copy_counts(buffer):
                if count is not None and produced >= count:
                    return
                yield message
                produced += 1


def producer_key(event: dict[str, Any]) -> bytes:
    """The Kafka key a producer should give a raw event: its subject (``streams.core.subjects``),
    so that a subject's events, and so its sessions, stay on one raw partition in the order
    they were sent."""
    recipient = (event.get("email") or {}).get("recipient")
    subject = subject_of(
        event["event_id"], event.get("user_id"), event.get("anonymous_id"), recipient, event.get("session_id")
    )
    return str(subject).encode()


def _labelled(events: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    """Give every event not yet labelled the channel it must be attributed to."""
    for event in events:
        event.setdefault(CHANNEL_LABEL, channel)
    return events


class _EventId(msgspec.Struct):
    event_id: str


def _first_copy_counts(batch: list[Message]) -> list[Message]:
    """After shuffling, a retry may come before the original; then the retry is the one that
    counts. Relabel so that the first copy of an event id in the batch is the valid one."""
    seen: set[str] = set()
    relabelled = []
    for message in batch:
        if message.expect in (VALID, DUPLICATE):
            event_id = msgspec.json.decode(message.payload, type=_EventId).event_id
            label = DUPLICATE if event_id in seen else VALID
            seen.add(event_id)
            message = dataclasses.replace(message, expect=label)
        relabelled.append(message)
    return relabelled


class ProgressBar:
    def __init__(self, total: int | None, out: TextIO = sys.stderr) -> None:
        self.total = total
        self.out = out
        self.interactive = out.isatty()
        self._last_draw = 0.0

    def update(self, done: int, elapsed: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < (0.2 if self.interactive else 5.0):
            return
        self._last_draw = now
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:
            filled = int(30 * done / self.total)
            text = f"[{'#' * filled}{'-' * (30 - filled)}] {done}/{self.total} ({rate:.0f}/s)"
        else:
            text = f"{done} messages ({rate:.0f}/s)"
        self.out.write(("\r" if self.interactive else "") + text + ("" if self.interactive else "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.interactive:
            self.out.write("\n")


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
    """An alert a story must produce under the shipped rules (streams/core/alert_rules.yml): its
    window start lies between ``earliest`` and ``latest``."""

    rule: str
    campaign: str
    status: str
    earliest: datetime
    latest: datetime
    cause: str


@dataclass(frozen=True, slots=True)
class Story:
    """A named course of traffic over simulated hours, with the alerts it should produce.

    Traffic is email-heavy, so every campaign has a few hundred deliveries an hour: enough for
    the shipped email open rate rule's volume guard and for its noise to stay far below the
    rule's threshold. ``dip`` = (first hour, hours, share of opens kept, opens broken) makes
    one campaign's email opens fall, or arrive as bad rows, for a while, then recover.
    """

    name: str
    description: str
    hours: int
    journeys_per_hour: int = 700
    campaigns: int = 2
    dip: tuple[int, int, float, bool] | None = None
    journey_weights: tuple[tuple[str, int], ...] = (("email", 70), ("visit", 15), ("ad", 10), ("social", 5))

    def start(self, now: datetime) -> datetime:
        """The first hour: the story ends an hour before ``now`` (within the event age limit)."""
        return (now - timedelta(hours=self.hours + 1)).replace(minute=0, second=0, microsecond=0)

    def open_dip(self, start: datetime) -> OpenDip | None:
        if self.dip is None:
            return None
        first_hour, hours, share_kept, broken = self.dip
        begins = start + timedelta(hours=first_hour)
        return OpenDip(CAMPAIGNS[0], begins, begins + timedelta(hours=hours), share_kept, broken)

    def scenario(self, seed: int, grace_seconds: int | None = None, run_nonce: int = 0) -> Scenario:
        return Scenario(
            seed,
            campaigns=self.campaigns,
            fractions=Fractions(duplicates=0.02, late=0.02, shuffle_window=20),
            grace_seconds=grace_seconds,
            journey_weights=dict(self.journey_weights),
            run_nonce=run_nonce,
        )

    def messages(
        self, seed: int, start: datetime, grace_seconds: int | None = None, run_nonce: int = 0
    ) -> Iterator[Message]:
        """The story's messages, journeys evenly spread over its hours of event time."""
        scenario = self.scenario(seed, grace_seconds, run_nonce)
        scenario.open_dip = self.open_dip(start)
        step = 3600 / self.journeys_per_hour
        journeys = self.hours * self.journeys_per_hour
        # The scenario reads the clock once per journey, whose events end at that reading.
        first = start + timedelta(seconds=JOURNEY_SPAN)
        readings = itertools.count()
        read = 0

        def clock() -> datetime:
            nonlocal read
            read = next(readings)
            return first + timedelta(seconds=read * step)

        for message in scenario.messages(None, clock):
            if read >= journeys:
                return
            yield message

    def expected_alerts(self, start: datetime) -> list[ExpectedAlert]:
        """The email open rate rule fires for the campaign within two windows of the dip, and
        resolves within two windows of its end; nothing else alerts."""
        dip = self.open_dip(start)
        if dip is None:
            return []
        hour = timedelta(hours=1)
        rule, cause = "email-open-rate-drop", "tracking_broke" if dip.broken else "kpi_fell"
        return [
            ExpectedAlert(rule, dip.campaign, "firing", dip.begins, dip.begins + hour, cause),
            ExpectedAlert(rule, dip.campaign, "resolved", dip.ends, dip.ends + hour, cause),
        ]


STORIES = {
    story.name: story
    for story in (
        Story("steady-week", "a week of steady traffic: no alert", hours=7 * 24 - 2),
        Story(
            "drop",
            "email opens of the first campaign fall 60% for two hours, then recover",
            hours=12,
            dip=(7, 2, 0.4, False),
        ),
        Story(
            "broken-tracking",
            "for two hours every email open of the first campaign arrives broken (a bad row)",
            hours=12,
            dip=(7, 2, 1.0, True),
        ),
    )
}


async def produce_messages(
    settings: Settings,
    messages: Iterable[Message],
    *,
    rate: float | None,
    count: int | None,
    progress: ProgressBar | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[GroundTruth, float]:
    """Send ``messages`` (at most ``count``) to the raw topic; ``rate`` is messages per second
    (None: flat out). Returns the ground truth of what was sent and the seconds it took."""
    truth = GroundTruth()
    producer = AIOKafkaProducer(**kafka_options(settings), linger_ms=10, acks="all")
    await producer.start()
    started = time.monotonic()
    try:
        pending: list[asyncio.Future[Any]] = []
        for index, message in enumerate(messages):
            if (stop is not None and stop.is_set()) or (count is not None and index >= count):
                break
            if rate:
                ahead = (index / rate) - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(settings.topics.raw_topic, message.payload, key=message.key))
            truth.add(message)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
            if progress:
                progress.update(index + 1, time.monotonic() - started)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        if progress:
            progress.update(truth.raw, time.monotonic() - started, force=True)
            progress.close()
    return truth, time.monotonic() - started
