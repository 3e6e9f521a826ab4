"""The internal delta topic's contract: cell identities, cell deltas, watermark marks and the
message that carries them from ingest to the KPI agent."""

from __future__ import annotations

import zlib
from typing import Annotated, NamedTuple

import msgspec

ALL = "*"


#: Window size (and start) of the running totals: since counting began, never closed.
ALL_TIME = 0


def is_drill_down(channel: str, campaign: str) -> bool:
    """A campaign's channel (neither is ``*``): published on the topics and in the view, not
    as Prometheus series (their number is channels x campaigns)."""
    return channel != ALL and campaign != ALL


#: Cells per delta message: a cell encodes to at most about 1 KB (a 256-character campaign
#: and every measure), so a message stays under Kafka's default 1 MB limit.
DELTAS_PER_MESSAGE = 500


class CellKey(NamedTuple):
    """Identity of one cell; the key of deltas and of the KPI table."""

    window_seconds: int
    window_start: int
    channel: str
    campaign: str

    def encode(self) -> bytes:
        return json_key(self)


def series_partition(channel: str, campaign: str, partitions: int) -> int:
    """The delta partition of every cell of a channel and campaign, whatever its window: all
    windows of a series meet in one place, in order, which drop alerts need (they compare a
    window with the ones before it). A stable hash, the same in every process."""
    return zlib.crc32(json_key((channel, campaign))) % partitions


def json_key(key: tuple[object, ...]) -> bytes:
    """Kafka keys are JSON arrays: unambiguous whatever a campaign name holds."""
    return msgspec.json.encode(key)


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """Increments of the measures of one cell, produced by one ingest flush."""

    window_seconds: Annotated[int, msgspec.Meta(ge=0, description="0: a running total.")]
    window_start: Annotated[int, msgspec.Meta(description="Unix seconds.")]
    channel: str
    campaign: str
    measures: dict[str, int]

    @property
    def key(self) -> CellKey:
        return CellKey(self.window_seconds, self.window_start, self.channel, self.campaign)


class DeltaBatch(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the delta topic: cells of one partition from one flush, then (in the
    flush's last message to each partition) the event-time marks of the raw partitions the
    flush read, which apply after the deltas."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^2-[0-9]+-[0-9]+$")]
    deltas: list[Delta]
    marks: list[WatermarkMark] = []


class WatermarkMark(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="watermark"):
    """Event-time progress of one raw partition, sent by ingest to every delta partition.

    When the raw topic is repartitioned by subject, every partition of the repartitioned
    topic carries events of every raw partition: its ingest then sends one mark per raw
    partition, as far as it has read that raw partition's events (``counted_partition`` set),
    and windows close once every such pair has passed them."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    raw_partition: Annotated[int, msgspec.Meta(ge=0)]
    raw_partitions: Annotated[int, msgspec.Meta(gt=0, description="Partitions of the raw topic.")]
    watermark: Annotated[
        float | None,
        msgspec.Meta(description="Unix seconds; null while the partition has never had an event."),
    ]
    idle: Annotated[bool, msgspec.Meta(description="No message for the idle timeout.")]
    counted_partition: (
        Annotated[
            int,
            msgspec.Meta(
                ge=0,
                description="The partition of the repartitioned topic whose ingest sent the mark; "
                "absent when ingest counts the raw topic itself.",
            ),
        ]
        | None
    ) = None
    counted_partitions: (
        Annotated[int, msgspec.Meta(gt=0, description="Partitions of the repartitioned topic.")] | None
    ) = None

    @property
    def source(self) -> tuple[int, int]:
        """(counted partition, raw partition): what this mark reports the progress of."""
        counted = self.raw_partition if self.counted_partition is None else self.counted_partition
        return counted, self.raw_partition
