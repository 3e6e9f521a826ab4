"""The ingest state journal's contract: what ingest remembers per subject, as it travels to Kafka.

Ingest keeps per-subject state in process with the raw partition that owns the subject (event
ids seen, first sightings of distinct counts, sessions). Each flush writes what changed to the
journal topic's partition of the same number, in the flush's transaction, so the journal up to
a committed raw offset is exactly the state at that offset. Now and then a flush writes the
whole state instead (a snapshot, in parts), and a new owner folds the journal from the newest
snapshot on.
"""

from __future__ import annotations

import msgspec


class Session(msgspec.Struct, array_like=True, frozen=True):
    """One session as remembered: its event-time span, channel and campaign."""

    first_at: float
    last_at: float
    channel: str
    campaign: str
    #: The client's session id (pseudonymized); empty for a derived session.
    client: str = ""


class JournalRecord(msgspec.Struct, array_like=True, frozen=True):
    """One message of the journal: state entries to set, each with when it expires (Unix
    seconds, wall clock); folding the records in order gives the state."""

    schema_version: str
    #: A part of a snapshot (the whole state as of its flush) rather than one flush's changes.
    snapshot: bool
    #: (key, expires at): an event id (``e:<id>``) or a distinct-count key seen first.
    sightings: list[tuple[str, float]]
    #: (subject key, expires at, its sessions): a subject whose sessions changed.
    sessions: list[tuple[str, float, tuple[Session, ...]]]
