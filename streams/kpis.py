"""KPI keys, pre-aggregation of events into deltas, and idempotent merging of deltas.

A count KPI is accumulated per finest cell (kpi, window, channel, campaign) while a
batch is ingested, then rolled up once per flush into the three published grains:
per channel (campaign ``*``), per campaign (channel ``*``) and overall (both ``*``).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, NamedTuple

import msgspec

from streams.attribution import Attribution
from streams.events import AwareTime

ALL = "*"
KPI_SCHEMA_VERSION = "1-0-0"
DELTA_SCHEMA_VERSION = "1-0-0"

PAGE_VIEWS = "page_views"
ORGANIC_TRAFFIC = "organic_traffic"
BLOG_TRAFFIC = "blog_traffic"
ORGANIC_SEARCH = "organic_search"

COUNT_KPIS: tuple[str, ...] = (PAGE_VIEWS, ORGANIC_TRAFFIC, BLOG_TRAFFIC)


class KpiKey(NamedTuple):
    """Identity of one KPI value: stable across partitions, workers and restarts."""

    kpi: str
    window_seconds: int
    window_start: int
    channel: str
    campaign: str

    def encode(self) -> bytes:
        """The Kafka message key: a JSON array, unambiguous whatever the campaign name holds."""
        return msgspec.json.encode(tuple(self))

    @classmethod
    def decode(cls, raw: bytes) -> KpiKey:
        kpi, window_seconds, window_start, channel, campaign = msgspec.json.decode(
            raw, type=tuple[str, int, int, str, str]
        )
        return cls(kpi, window_seconds, window_start, channel, campaign)


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """An increment of one KPI key, produced by ingest."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    kpi: str
    window_seconds: Annotated[int, msgspec.Meta(gt=0)]
    window_start: Annotated[int, msgspec.Meta(description="Unix seconds.")]
    channel: str
    campaign: str
    count: int

    @property
    def key(self) -> KpiKey:
        return KpiKey(self.kpi, self.window_seconds, self.window_start, self.channel, self.campaign)


class KpiState(msgspec.Struct, frozen=True):
    """What the Faust table stores per key; ``applied_offset`` makes replays no-ops."""

    count: int
    applied_offset: int


class KpiUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """The latest value of one KPI in one window."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    kpi: Annotated[str, msgspec.Meta(description="page_views, organic_traffic, blog_traffic, ...")]
    window_seconds: Annotated[int, msgspec.Meta(gt=0)]
    window_start: AwareTime
    window_end: Annotated[datetime, msgspec.Meta(tz=True, description="Exclusive.")]
    channel: Annotated[str, msgspec.Meta(description="A channel, or '*' for all channels.")]
    campaign: Annotated[
        str, msgspec.Meta(description="Lower-cased utm campaign, '(none)' when absent, '*' for all.")
    ]
    value: Annotated[int, msgspec.Meta(ge=0)]
    updated_at: AwareTime


def window_start(event_epoch_seconds: float, window_seconds: int) -> int:
    """Start (epoch seconds) of the tumbling window holding the instant."""
    return int(event_epoch_seconds // window_seconds) * window_seconds


def page_view_kpis(channel: str, path: str, blog_path_prefix: str) -> tuple[str, ...]:
    """The count KPIs one page view adds to."""
    kpis = [PAGE_VIEWS]
    if channel == ORGANIC_SEARCH:
        kpis.append(ORGANIC_TRAFFIC)
    if path.startswith(blog_path_prefix):
        kpis.append(BLOG_TRAFFIC)
    return tuple(kpis)


class DeltaAggregator:
    """Pre-aggregates events of a batch; ``drain`` yields one delta per KPI key."""

    def __init__(self, window_seconds: int, blog_path_prefix: str) -> None:
        self.window_seconds = window_seconds
        self.blog_path_prefix = blog_path_prefix
        self._cells: Counter[tuple[str, int, str, str]] = Counter()

    def __len__(self) -> int:
        return len(self._cells)

    def add_page_view(self, event_epoch_seconds: float, attribution: Attribution, path: str) -> None:
        start = window_start(event_epoch_seconds, self.window_seconds)
        for kpi in page_view_kpis(attribution.channel, path, self.blog_path_prefix):
            self._cells[(kpi, start, attribution.channel, attribution.campaign)] += 1

    def drain(self) -> list[Delta]:
        rolled: Counter[KpiKey] = Counter()
        for (kpi, start, channel, campaign), count in self._cells.items():
            rolled[KpiKey(kpi, self.window_seconds, start, channel, ALL)] += count
            rolled[KpiKey(kpi, self.window_seconds, start, ALL, campaign)] += count
            rolled[KpiKey(kpi, self.window_seconds, start, ALL, ALL)] += count
        self._cells.clear()
        return [
            Delta(
                schema_version=DELTA_SCHEMA_VERSION,
                kpi=key.kpi,
                window_seconds=key.window_seconds,
                window_start=key.window_start,
                channel=key.channel,
                campaign=key.campaign,
                count=count,
            )
            for key, count in rolled.items()
        ]


def apply_delta(state: KpiState | None, delta: Delta, offset: int) -> KpiState | None:
    """Merge ``delta`` (read at ``offset`` of its partition); None when it was applied before.

    Every delta of a key arrives through one partition, in offset order, so an offset at
    or below the last one applied is a replay after a restart.
    """
    if state is None:
        return KpiState(count=delta.count, applied_offset=offset)
    if offset <= state.applied_offset:
        return None
    return KpiState(count=state.count + delta.count, applied_offset=offset)


def kpi_update(key: KpiKey, state: KpiState, now: datetime | None = None) -> KpiUpdate:
    return KpiUpdate(
        schema_version=KPI_SCHEMA_VERSION,
        kpi=key.kpi,
        window_seconds=key.window_seconds,
        window_start=datetime.fromtimestamp(key.window_start, UTC),
        window_end=datetime.fromtimestamp(key.window_start + key.window_seconds, UTC),
        channel=key.channel,
        campaign=key.campaign,
        value=state.count,
        updated_at=now or datetime.now(UTC),
    )
