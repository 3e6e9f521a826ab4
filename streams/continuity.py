"""Which records of a delta partition the agent has applied, and where one may be missing.

Faust's stream does not hand the agent every record of its partitions: around a rebalance it
skips records it had buffered and acknowledges them, and after a restart it can resume past
records it dropped while seeking (docs/architecture.md). The agent therefore keeps its own
guarantee: it applies the records of each delta partition in offset order, all of them.
Kafka leaves offsets without a record (transaction markers, aborted records), so an offset
jump is not proof of a loss; it is a gap the agent reads back from Kafka before going on.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Arrival(enum.Enum):
    REPLAY = "replay"  # at or below the last applied offset: applied before
    NEXT = "next"  # right after it
    AFTER_GAP = "after gap"  # offsets in between may hold records never delivered


@dataclass(slots=True)
class DeltaContinuity:
    """Every record of the partition up to ``applied_through`` is applied (-1: none yet)."""

    applied_through: int = -1

    def arrival(self, offset: int) -> Arrival:
        if offset <= self.applied_through:
            return Arrival.REPLAY
        if offset == self.applied_through + 1:
            return Arrival.NEXT
        return Arrival.AFTER_GAP

    def gap(self, offset: int) -> range:
        """The offsets to read back before the record at ``offset``."""
        return range(self.applied_through + 1, offset)

    def applied(self, offset: int) -> None:
        self.applied_through = max(self.applied_through, offset)


def unapplied_messages(highwaters: Mapping[int, int | None], applied_through: Mapping[int, int]) -> int:
    """Offsets past what the agent applied, summed over the delta partitions it owns (a
    partition whose end is not known yet counts 0). Each of ingest's transactions leaves a
    marker offset, so an agent that is caught up is one offset behind on each partition."""
    return sum(
        max(0, end - 1 - applied_through[partition])
        for partition, end in highwaters.items()
        if end is not None and partition in applied_through
    )
