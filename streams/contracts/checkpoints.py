"""The contract of a committed input offset: what its metadata carries to the next owner.

Ingest and the repartition stage commit their input offsets inside the Kafka transaction that
writes their outputs (``agents.kafka.checkpoint``). With each offset goes, as JSON in the
offset's metadata, what a worker that takes the partition over needs besides it: the watermark
to resume from and where the partition's state journal stands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


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
