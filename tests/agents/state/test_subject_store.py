"""Ingest's state store on disk (RocksDB): committed changes and their checkpoint in one write,
expiry through the index by time, a damaged store rebuilt, a store in use refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.state.rocks import StoreBudget
from agents.state.subject_store import EXPIRY, STATE_STORE_LAYOUT, SubjectStore, _index, _unpacked
from streams.contracts.checkpoints import CommitPoint, StoreCheckpoint
from streams.contracts.journal import Session
from streams.core.subject_state import PartitionState, resume

NOW = 1_000_000.0


@pytest.fixture
def budget() -> StoreBudget:
    return StoreBudget(block_cache_mb=8, write_buffer_mb=8)


def test_committed_changes_and_their_checkpoint_outlive_the_process(
    tmp_path: Path, budget: StoreBudget
) -> None:
    store = SubjectStore(tmp_path / "p0", budget)
    assert store.checkpoint() is None
    state = PartitionState(store, StoreCheckpoint("journal", 0, layout=STATE_STORE_LAYOUT), lambda: NOW)
    assert state.first_sighting("e:a", 60)
    state.set_sessions("s:v", (Session(1.0, 2.0, "email", "c1"),), 600)
    changes = state.take_changes()
    written = state.committed(CommitPoint(42, None, None, 3), changes)
    store.write(((k, e, v) for k, (e, v) in written.items()), state.checkpoint, NOW)
    store.close()

    reopened = SubjectStore(tmp_path / "p0", budget)
    checkpoint = reopened.checkpoint()
    assert checkpoint == StoreCheckpoint("journal", 0, 42, None, 3, 2, 0, STATE_STORE_LAYOUT)
    again = PartitionState(reopened, checkpoint, lambda: NOW)
    assert not again.first_sighting("e:a", 60)
    assert again.sessions("s:v") == (Session(1.0, 2.0, "email", "c1"),)
    assert again.take_changes() is None
    reopened.close()


def test_entries_past_their_horizon_leave_through_the_expiry_index(
    tmp_path: Path, budget: StoreBudget
) -> None:
    store = SubjectStore(tmp_path / "p0", budget)
    lasting = [(f"se:{i}".encode(), NOW + 3600, b"") for i in range(1000)]
    soon = [(f"se:soon{i}".encode(), NOW + 10, b"") for i in range(5)]
    rewritten = (b"se:again", NOW + 10, b"")
    store.write([*lasting, *soon, rewritten], None)
    store.write([(b"se:again", NOW + 3600, b"")], None)  # seen again: lives on
    store.write([], None, now=NOW + 11)
    keys = {key for key, _, _ in store.entries()}
    assert keys == {key for key, _, _ in lasting} | {b"se:again"}
    index = list(store.db.get_column_family(EXPIRY).items())
    assert all(_index.unpack_from(k)[0] > NOW + 11 for k, _ in index), "the expired index entries went"
    assert {key for _, listed in index for key in _unpacked(listed)} == keys, "the index lists what lives"
    assert len(index) == 2, "one index entry per second and write, not one per key"
    store.close()


def test_a_damaged_store_is_removed_and_rebuilt_not_read(tmp_path: Path, budget: StoreBudget) -> None:
    path = tmp_path / "p0"
    store = SubjectStore(path, budget)
    store.write(
        [(f"se:{i}".encode(), NOW + 3600, b"x" * 100) for i in range(2000)], StoreCheckpoint("journal", 0, 5)
    )
    store.db.flush()
    store.close()
    [table] = sorted(path.glob("*.sst"))
    with table.open("r+b") as file:
        file.truncate(100)
    reopened = SubjectStore(path, budget)
    assert reopened.checkpoint() is None and list(reopened.entries()) == []
    identity = StoreCheckpoint("journal", 0, layout=STATE_STORE_LAYOUT)
    assert not resume(reopened.checkpoint(), identity, CommitPoint(5, None, 0, 3)).keep
    reopened.close()


def test_a_store_another_process_holds_is_refused_with_what_to_change(
    tmp_path: Path, budget: StoreBudget
) -> None:
    store = SubjectStore(tmp_path / "p0", budget)
    with pytest.raises(RuntimeError, match="MKPI_WORKER_NAME"):
        SubjectStore(tmp_path / "p0", budget)
    store.close()


def test_the_store_says_what_memory_rocksdb_holds_for_it(tmp_path: Path, budget: StoreBudget) -> None:
    store = SubjectStore(tmp_path / "p0", budget)
    store.write([(f"se:{i}".encode(), NOW + 3600, b"x" * 100) for i in range(5000)], None)
    memory = store.memory()
    assert set(memory) == {"block_cache", "memtables", "table_readers"}
    assert memory["memtables"] > 5000 * 100, "the writes sit in the memtables until a flush"
    store.close()
