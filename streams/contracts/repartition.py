"""The contract of the repartitioned topic (``<prefix>.raw-by-subject``): what the repartition
stage adds to the raw messages it copies, and the marks it sends between them.

Each partition of the repartitioned topic holds events of every raw partition, so its own
order says nothing of how far a raw partition has come. The stage stamps each copied message
with its raw partition and that partition's watermark just before it (the same watermark ingest
would judge the event by, had the producers keyed the raw topic by subject), and after each
batch sends every repartitioned partition a ``ForwardedMarks`` message: ingest judges lateness
by the stamps and holds windows by the marks (``streams.core.watermarks``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

#: Header of a copied message: its raw partition, as decimal digits.
RAW_PARTITION_HEADER = "mkpi-raw-partition"
#: Header of a copied message: its raw partition's watermark before it (Unix seconds as text;
#: empty while the partition has had no valid event).
RAW_WATERMARK_HEADER = "mkpi-raw-watermark"
#: Header of a message that is no event but the stage's ``ForwardedMarks`` (value: its JSON).
MARKS_HEADER = "mkpi-marks"


class ForwardedMark(msgspec.Struct, frozen=True, kw_only=True):
    """How far one raw partition has come, as the repartition stage has copied it."""

    raw_partition: Annotated[int, msgspec.Meta(ge=0)]
    watermark: Annotated[
        float | None,
        msgspec.Meta(description="Unix seconds; null while the partition has had no valid event."),
    ]
    idle: Annotated[bool, msgspec.Meta(description="No message for the idle timeout.")]


class ForwardedMarks(msgspec.Struct, frozen=True, kw_only=True):
    """The marks of the raw partitions a repartition batch copied (or that went idle)."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    raw_partitions: Annotated[int, msgspec.Meta(gt=0, description="Partitions of the raw topic.")]
    marks: list[ForwardedMark]
