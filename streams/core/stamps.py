"""The repartition stage's part of event time: each raw partition's watermark, the stamp of
every copied message, and the marks sent between them (``streams.contracts.repartition``).

A raw partition's watermark moves as ingest's would, had producers keyed the raw topic by
subject: with every valid event in partition order (``decode_in_time``), from the one
committed with the partition's offset, and with the wall clock once the partition has been
idle. A copied message is stamped with the watermark just before it, so ingest judges its
lateness exactly as it would on the raw partition itself. A mark is only ever sent through
``marks``, which makes it the floor of later stamps: no event stamped after a mark is judged
by less than the mark says, so windows closed on marks never miss a counted event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from streams.contracts.repartition import ForwardedMark, ForwardedMarks
from streams.contracts.versions import FORWARDED_MARKS_VERSION
from streams.core.ingestor import IngestPolicy
from streams.core.validation import Rejection, decode_in_time
from streams.core.watermarks import PartitionWatermarks


class RawProgress:
    """Watermarks of the raw partitions this repartition stage copies."""

    def __init__(
        self,
        policy: IngestPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.watermarks = PartitionWatermarks(policy.idle_timeout_seconds, monotonic)
        #: Partitions of the raw topic (all of them, not only this worker's).
        self.raw_partitions = 0
        self._sent: dict[int, tuple[float | None, bool]] = {}

    def assign(self, partition: int, committed: float | None) -> None:
        self.watermarks.assign(partition, committed)
        self._sent.pop(partition, None)

    def revoke(self, partition: int) -> None:
        self.watermarks.revoke(partition)
        self._sent.pop(partition, None)

    def stamps(self, partition: int, payloads: Sequence[bytes | None]) -> list[float | None]:
        """The watermark before each message of a batch of one partition, in order; the
        partition's watermark moves past the batch's valid events."""
        policy, now = self.policy, self.clock()
        watermark = self.watermarks.current(partition)
        stamps: list[float | None] = []
        self.watermarks.arrived(partition)
        for payload in payloads:
            stamps.append(watermark)
            in_time = decode_in_time(
                payload or b"",
                policy.max_event_bytes,
                now,
                policy.max_event_age_seconds,
                policy.max_event_future_seconds,
            )
            if isinstance(in_time, Rejection):
                continue
            at = in_time[1].timestamp()
            self.watermarks.observed(partition, at)
            watermark = at if watermark is None else max(watermark, at)
        return stamps

    def _changed(self) -> list[int]:
        """Partitions whose mark differs from the one last sent (none sent: no watermark, not
        idle, which is what a missing mark means to ingest as well)."""
        return [
            partition
            for partition in self.watermarks.partitions
            if self._sent.get(partition, (None, False))
            != (self.watermarks.current(partition), self.watermarks.idle(partition))
        ]

    def has_news(self) -> bool:
        """Whether a partition's watermark moved or went idle since its mark was last sent."""
        return bool(self._changed())

    def marks(self) -> ForwardedMarks | None:
        """The marks of the partitions whose watermark moved or went idle since they were last
        sent, now published (the floor of later stamps); None when none did."""
        changed = self._changed()
        if not changed:
            return None
        marks = []
        for partition in changed:
            watermark, idle = self.watermarks.publish(partition), self.watermarks.idle(partition)
            self._sent[partition] = (watermark, idle)
            marks.append(ForwardedMark(raw_partition=partition, watermark=watermark, idle=idle))
        return ForwardedMarks(
            schema_version=FORWARDED_MARKS_VERSION,
            raw_partitions=max(self.raw_partitions, *(m.raw_partition + 1 for m in marks)),
            marks=marks,
        )

    def committed(self, partition: int) -> float | None:
        """The watermark to commit with the partition's offset (as last published)."""
        return self._sent.get(partition, (self.watermarks.current(partition), False))[0]

    def forget_sent(self) -> None:
        """After an aborted transaction: its marks were never seen, so send them again."""
        self._sent.clear()
