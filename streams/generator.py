"""Realistic raw marketing events, deterministic for a seed, and a rate-limited producer.

``EventFactory`` is pure: given a seed and an event-time clock it yields the same
events every time. ``produce_events`` sends them to the raw topic at a target rate,
draws a progress bar on stderr and returns a summary.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
from aiokafka import AIOKafkaProducer

from streams.settings import Settings

#: (utm source, utm medium, referrer, weight): where visitors come from.
TRAFFIC_SOURCES: tuple[tuple[str | None, str | None, str | None, int], ...] = (
    ("google", "organic", "https://www.google.com/", 22),
    (None, None, "https://www.google.com/search?q=crm", 10),
    (None, None, "https://www.bing.com/", 4),
    ("duckduckgo", "organic", "https://duckduckgo.com/", 2),
    ("google", "cpc", "https://www.google.com/", 10),
    ("bing", "ppc", "https://www.bing.com/", 3),
    ("facebook", "social", "https://m.facebook.com/", 6),
    ("linkedin", "paid_social", "https://www.linkedin.com/", 4),
    ("newsletter", "email", None, 8),
    ("youtube", "video", "https://www.youtube.com/", 3),
    ("partner-blog", "referral", "https://partner.example.org/post", 4),
    (None, None, "https://news.example.net/article", 4),
    ("adnetwork", "display", "https://ads.example.com/", 4),
    (None, None, None, 14),
    ("mystery", "carrier-pigeon", None, 2),
)
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


@dataclass
class GeneratorSummary:
    produced: int = 0
    seconds: float = 0.0
    by_type: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)

    def render(self) -> str:
        rate = self.produced / self.seconds if self.seconds else 0.0
        lines = [f"produced {self.produced} events in {self.seconds:.1f}s ({rate:.0f}/s)"]
        lines += [f"  {name:<16} {count}" for name, count in sorted(self.by_type.items())]
        lines.append("  by utm source / medium:")
        lines += [f"    {name:<28} {count}" for name, count in self.by_source.most_common()]
        return "\n".join(lines)


class EventFactory:
    """Page views from a fixed visitor population, deterministic for ``seed``."""

    def __init__(self, seed: int, campaigns: int = len(CAMPAIGNS), visitors: int = 5000) -> None:
        self.random = random.Random(seed)
        self.campaigns = [*CAMPAIGNS, *(f"campaign_{i:03d}" for i in range(len(CAMPAIGNS), campaigns))][
            :campaigns
        ]
        self.visitors = [uuid.UUID(int=self.random.getrandbits(128)).hex for _ in range(visitors)]
        self._source_weights = [w for *_, w in TRAFFIC_SOURCES]
        self._page_weights = [w for *_, w in PAGES]

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self.random.getrandbits(128), version=4))

    def page_view(self, occurred_at: datetime) -> dict[str, Any]:
        source, medium, referrer, _ = self.random.choices(TRAFFIC_SOURCES, self._source_weights)[0]
        path, title, _ = self.random.choices(PAGES, self._page_weights)[0]
        visitor = self.random.choice(self.visitors)
        event: dict[str, Any] = {
            "type": "page_view",
            "schema_version": "1-0-0",
            "event_id": self._event_id(),
            "occurred_at": occurred_at.isoformat(timespec="milliseconds"),
            "anonymous_id": visitor,
            "session_id": f"{visitor[:12]}-{occurred_at:%Y%m%d%H}",
            "page": {"path": path, "title": title, "url": f"https://shop.example.com{path}"},
        }
        if referrer:
            event["page"]["referrer"] = referrer
        if source or medium:
            utm: dict[str, str] = {}
            if source:
                utm["source"] = source
            if medium:
                utm["medium"] = medium
            if medium not in (None, "organic") or self.random.random() < 0.3:
                utm["campaign"] = self.random.choice(self.campaigns)
            event["utm"] = utm
        return event

    def events(self, count: int | None, clock: Callable[[], datetime]) -> Iterator[dict[str, Any]]:
        produced = 0
        while count is None or produced < count:
            yield self.page_view(clock())
            produced += 1


def _now() -> datetime:
    return datetime.now(UTC)


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
            bar = "#" * filled + "-" * (30 - filled)
            text = f"[{bar}] {done}/{self.total} ({rate:.0f}/s)"
        else:
            text = f"{done} events ({rate:.0f}/s)"
        self.out.write(("\r" if self.interactive else "") + text + ("" if self.interactive else "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.interactive:
            self.out.write("\n")


async def produce_events(
    settings: Settings,
    *,
    seed: int,
    rate: float | None,
    count: int | None,
    campaigns: int = len(CAMPAIGNS),
    progress: ProgressBar | None = None,
    stop: asyncio.Event | None = None,
) -> GeneratorSummary:
    """Send generated events to the raw topic; ``rate`` is events per second (None: flat out)."""
    factory = EventFactory(seed, campaigns=campaigns)
    summary = GeneratorSummary()
    encoder = msgspec.json.Encoder()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=10, acks="all")
    await producer.start()
    started = time.monotonic()
    try:
        pending: list[asyncio.Future[Any]] = []
        for index, event in enumerate(factory.events(count, _now)):
            if stop is not None and stop.is_set():
                break
            if rate:
                ahead = (index / rate) - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(settings.raw_topic, encoder.encode(event)))
            summary.produced += 1
            summary.by_type[event["type"]] += 1
            utm = event.get("utm", {})
            summary.by_source[f"{utm.get('source', '(none)')} / {utm.get('medium', '(none)')}"] += 1
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
            if progress:
                progress.update(summary.produced, time.monotonic() - started)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        summary.seconds = time.monotonic() - started
        if progress:
            progress.update(summary.produced, summary.seconds, force=True)
            progress.close()
    return summary
