"""The contract of a committed input offset: what its metadata carries to the next owner.

Ingest and the repartition stage commit their input offsets inside the Kafka transaction that
writes their outputs (``agents.kafka.checkpoint``). With each offset goes, as JSON in the
offset's metadata, what a worker that takes the partition over needs besides it: the watermark
to resume from and where the partition's state journal stands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec


@dataclass(frozen=True, slots=True)
class CommitPoint:
    """Where an input partition resumes, the watermark its next owner starts from, and the span
    of the state journal its state is restored from: the newest snapshot (None: the journal's
    start) up to the end of the last committed flush's records (None: none written yet)."""

    next_offset: int
    watermark: float | None
    state_from: int | None = None
    state_to: int | None = None

    def as_commit(self) -> tuple[int, str]:
        fields = {"watermark": self.watermark, "state_from": self.state_from, "state_to": self.state_to}
        return self.next_offset, json.dumps(fields)

    @classmethod
    def from_commit(cls, offset: int, metadata: str) -> CommitPoint:
        """The point as committed; metadata that is missing or unreadable names neither a
        watermark nor a snapshot."""
        try:
            fields = json.loads(metadata) if metadata else {}
        except ValueError:
            fields = {}
        if not isinstance(fields, dict):
            fields = {}
        watermark = fields.get("watermark")
        return cls(
            offset,
            float(watermark) if isinstance(watermark, int | float) else None,
            _offset(fields.get("state_from")),
            _offset(fields.get("state_to")),
        )


def _offset(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class StoreCheckpoint(msgspec.Struct, frozen=True):
    """Where a partition's state store on disk stands, written in the same batch as the state:
    the journal it follows and how far (the span a committed ``CommitPoint`` names), the raw
    offset it reflects, what decides the next snapshot, and how far a rolling one got."""

    journal_topic: str
    partition: int
    #: The raw offset the store reflects (None: nothing committed yet).
    next_offset: int | None = None
    #: The newest snapshot's first journal record (None: the journal's start).
    snapshot_offset: int | None = None
    #: The end of the journal records the store reflects (None: none yet).
    journal_end: int | None = None
    #: Entries journaled since the newest snapshot, and how many that snapshot held.
    journaled_since_snapshot: int = 0
    snapshot_entries: int = 0
    #: The layout of the store's keys and values (``STATE_STORE_LAYOUT``).
    layout: str = ""
    #: A rolling snapshot under way: the journal offset of its first record, the last store
    #: key copied, the entries copied and the changes journaled since it began.
    rolling_from: int | None = None
    rolling_cursor: bytes | None = None
    rolling_entries: int = 0
    rolling_changes: int = 0
