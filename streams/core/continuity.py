"""Which records of a delta partition the agent has applied, and where one may be missing.

Faust's stream does not hand the agent every record of its partitions: around a rebalance it
skips records it had buffered and acknowledges them, and after a restart it can resume past
records it dropped while seeking (docs/architecture.md). The agent therefore keeps its own
guarantee: it applies the records of each delta partition in offset order, all of them.
Kafka leaves offsets without a record (transaction markers, aborted records), so an offset
jump is not proof of a loss; it is a gap the agent reads back from Kafka before going on.

Applied is not enough: a record's table writes can reach the changelog while its outputs (a
window's final results, say) die with the worker, and Faust may then resume past it. So the
agent goes on from the last record whose outputs the broker acknowledged, which it writes to
the table after publishing; records applied after that one are applied again as replays, which
publish their outputs again and count nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(slots=True)
class DeltaContinuity:
    """Every record of the partition up to ``published_through`` is applied and its outputs
    are acknowledged; records up to ``applied_through`` are in the table (-1: none yet)."""

    applied_through: int = -1
    published_through: int = -1

    def gap(self, offset: int) -> range:
        """The offsets to read back (and apply, or publish again) before the record at
        ``offset``: empty when it follows the last published record, or is a replay."""
        return range(self.published_through + 1, offset)

    def was_applied(self, offset: int) -> bool:
        """Whether the record at ``offset`` reached the table before: applying it again only
        publishes its outputs."""
        return offset <= self.applied_through

    def applied(self, offset: int) -> None:
        self.applied_through = max(self.applied_through, offset)

    def published(self, offset: int) -> None:
        self.applied(offset)
        self.published_through = max(self.published_through, offset)


def unapplied_messages(highwaters: Mapping[int, int | None], applied_through: Mapping[int, int]) -> int:
    """Offsets past what the agent applied, summed over the delta partitions it owns (a
    partition whose end is not known yet counts 0). Each of ingest's transactions leaves a
    marker offset, so an agent that is caught up is one offset behind on each partition."""
    return sum(
        max(0, end - 1 - applied_through[partition])
        for partition, end in highwaters.items()
        if end is not None and partition in applied_through
    )
