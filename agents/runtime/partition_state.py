"""Ingest's per-partition state stores: opened at assignment, brought to the committed offset,
written after each committed flush, closed at revocation.

Each raw partition this worker owns has a RocksDB store under the worker's folder. At
assignment the store is checked against the partition's commit point
(``streams.core.subject_state.resume``): a store that follows the journal reads only the records
after its own checkpoint (none after a clean stop; the last flushes' after a kill -9 between a
Kafka commit and the store write; another owner's after the partition went away and came back);
any other (a new disk, another journal or layout, an unreadable file) is emptied and rebuilt
from the newest snapshot on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from agents.kafka.state_journal import StateJournal
from agents.state.rocks import StoreBudget
from agents.state.subject_store import STATE_STORE_LAYOUT, SubjectStore
from streams.contracts.checkpoints import CommitPoint, StoreCheckpoint
from streams.contracts.journal import JournalRecord
from streams.core.subject_state import JournalChanges, PartitionState, fold_record, resume

log = logging.getLogger(__name__)


@dataclass
class Folded:
    """What a restore read: journal records, and the entries of snapshot slices and of changes
    among them (what decides when the next snapshot is due)."""

    journaled_since_snapshot: int
    snapshot_entries: int
    records: int = 0

    def count(self, record: JournalRecord) -> None:
        entries = len(record.sightings) + len(record.sessions)
        self.records += 1
        if record.snapshot:
            self.snapshot_entries += entries
        else:
            self.journaled_since_snapshot += entries


class PartitionStores:
    """The stores of the raw partitions this worker owns, in one memory budget."""

    def __init__(self, folder: Path, budget: StoreBudget, journal: StateJournal, snapshot_after: int) -> None:
        self.folder = folder
        self.budget = budget
        self.journal = journal
        self.snapshot_after = snapshot_after
        self._open: dict[int, SubjectStore] = {}
        #: How the last restore of each partition went: whether its store was kept, and the
        #: journal records it read.
        self.restored: dict[int, tuple[bool, int]] = {}

    def store(self, partition: int) -> SubjectStore:
        store = self._open.get(partition)
        if store is None:
            store = self._open[partition] = SubjectStore(self.folder / f"partition-{partition}", self.budget)
        return store

    def close(self, partition: int) -> None:
        store = self._open.pop(partition, None)
        if store is not None:
            store.close()

    def close_all(self) -> None:
        for partition in list(self._open):
            self.close(partition)

    async def restore(self, partition: int, start: int, point: CommitPoint | None) -> PartitionState:
        """The partition's state as of ``point`` (None: never committed; read from ``start``)."""
        store = self.store(partition)
        local = store.checkpoint()
        plan = resume(local, StoreCheckpoint(self.journal.topic, partition, layout=STATE_STORE_LAYOUT), point)
        base = local if plan.keep and local is not None else None
        if base is None:
            store.clear()
            base = StoreCheckpoint(self.journal.topic, partition, layout=STATE_STORE_LAYOUT)
            folded = Folded(0, 0)
        else:
            folded = Folded(base.journaled_since_snapshot, base.snapshot_entries)
            if point is None or point.state_from != base.snapshot_offset:
                # A snapshot completed after this store's checkpoint: the one it was rolling
                # is no longer the newest, and starts again when due.
                base = msgspec.structs.replace(
                    base, rolling_from=None, rolling_cursor=None, rolling_entries=0, rolling_changes=0
                )
        started = time.monotonic()
        span = (base.journal_end or 0, base.journal_end or 0)
        if not (plan.keep and plan.read_from is None):
            async for records in self.journal.read(partition, plan.read_from, plan.read_to):
                now = time.time()
                for record in records:
                    folded.count(record)
                store.write((entry for record in records for entry in fold_record(record, now)), None)
            span = self.journal.span
        checkpoint = msgspec.structs.replace(
            base,
            next_offset=start,
            snapshot_offset=None if point is None else point.state_from,
            journal_end=None if point is None else point.state_to,
            journaled_since_snapshot=folded.journaled_since_snapshot,
            snapshot_entries=folded.snapshot_entries,
        )
        store.write((), checkpoint)
        self.restored[partition] = (plan.keep, folded.records)
        log.info(
            "partition %d's state: %s, %d journal records read (offsets %d-%d) in %.1f s; about %d entries",
            partition,
            "kept the store on disk" if plan.keep else "rebuilt from the journal",
            folded.records,
            *span,
            time.monotonic() - started,
            store.estimated_entries(),
        )
        return PartitionState(store, checkpoint, snapshot_after_entries=self.snapshot_after)

    def memory(self) -> dict[str, int]:
        """RocksDB's memory for the open stores, by kind (the shared block cache counted once)."""
        totals: dict[str, int] = {}
        for store in self._open.values():
            for kind, size in store.memory().items():
                totals[kind] = size if kind == "block_cache" else totals.get(kind, 0) + size
        return totals

    def committed(self, state: PartitionState, point: CommitPoint, journal: JournalChanges | None) -> None:
        """After a flush committed at ``point``: its changes and checkpoint to the store, at once,
        with the entries that expired since dropped."""
        written = state.committed(point, journal)
        now = time.time()
        self._open[state.checkpoint.partition].write(
            ((k, e, v) for k, (e, v) in written.items()), state.checkpoint, now
        )
