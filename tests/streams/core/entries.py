"""A partition's committed state in a dict, for the pure tests of what sits in front of it
(the RocksDB store passes the same contract in tests/agents/state)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from streams.contracts.checkpoints import CommitPoint, StoreCheckpoint
from streams.core.subject_state import JournalChanges, PartitionState


class DictStore:
    def __init__(self) -> None:
        self.data: dict[bytes, tuple[float, bytes]] = {}
        self.checkpoint: StoreCheckpoint | None = None

    def get(self, key: bytes) -> tuple[float, bytes] | None:
        return self.data.get(key)

    def entries(self, after: bytes = b"") -> Iterator[tuple[bytes, float, bytes]]:
        return ((key, expires, value) for key, (expires, value) in sorted(self.data.items()) if key > after)

    def estimated_entries(self) -> int:
        return len(self.data)

    def write(
        self,
        entries: Iterable[tuple[bytes, float, bytes]],
        checkpoint: StoreCheckpoint | None,
        now: float | None = None,
    ) -> None:
        if now is not None:
            self.data = {k: v for k, v in self.data.items() if v[0] > now}
        self.data.update((key, (expires, value)) for key, expires, value in entries)
        if checkpoint is not None:
            self.checkpoint = checkpoint


def new_state(clock: Callable[[], float] = time.time, snapshot_after_entries: int = 50_000) -> PartitionState:
    """An empty partition state over a ``DictStore``."""
    return PartitionState(DictStore(), StoreCheckpoint("journal", 0), clock, snapshot_after_entries)


def commit(state: PartitionState, point: CommitPoint, changes: JournalChanges | None) -> None:
    """What ingest does once a flush's transaction committed at ``point``."""
    written = state.committed(point, changes)
    store = state.store
    assert isinstance(store, DictStore)
    store.write(((k, e, v) for k, (e, v) in written.items()), state.checkpoint, state.clock())
