"""Ingest's per-subject state of one raw partition in RocksDB (``streams.core.subject_state``).

Layout (``STATE_STORE_LAYOUT``): the default column family maps a state key to its expiry
(8 bytes, a big-endian double of Unix seconds) and its value; the ``expiry`` column family
indexes the writes by the second they expire in: one index entry per second and write batch
(a write sequence keeps them apart) lists the keys written to expire then, so what has expired
is found by reading the index up to now, never by scanning the state, and an email open's dozen
sightings cost one index write, not twelve. One meta key holds the ``StoreCheckpoint``. A batch
of committed changes, the checkpoint they reach and the expiry of what ran out are one atomic
write: the store always stands at one committed flush.
"""

from __future__ import annotations

import gc
import logging
import math
import struct
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec
import rocksdict

from agents.state.rocks import StoreBudget, open_store, remove_store
from streams.contracts.checkpoints import StoreCheckpoint

log = logging.getLogger(__name__)

STATE_STORE_LAYOUT = "subject-state-2"
#: Sorts before every state key (they begin with a letter).
CHECKPOINT_KEY = b"\x00checkpoint"
EXPIRY = "expiry"
#: Expired keys dropped per commit at most, so one commit never stalls on a backlog.
EXPIRE_PER_COMMIT = 50_000
#: Keys listed by one index entry at most.
KEYS_PER_INDEX_ENTRY = 2000

_expiry = struct.Struct(">d")
_index = struct.Struct(">QQ")
_length = struct.Struct(">H")
_checkpoint_decoder = msgspec.msgpack.Decoder(StoreCheckpoint)
_encoder = msgspec.msgpack.Encoder()


def _packed(keys: list[bytes]) -> bytes:
    return b"".join(_length.pack(len(key)) + key for key in keys)


def _unpacked(packed: bytes) -> Iterator[bytes]:
    at = 0
    while at < len(packed):
        (size,) = _length.unpack_from(packed, at)
        yield packed[at + 2 : at + 2 + size]
        at += 2 + size


class SubjectStore:
    """One raw partition's committed state on disk (an ``EntryStore``)."""

    def __init__(self, path: Path, budget: StoreBudget) -> None:
        self.path = path
        self.budget = budget
        #: Keeps index entries of one second apart, across restarts too.
        self._sequence = time.time_ns()
        self.db = open_store(path, budget, (EXPIRY,))
        self._index = self.db.get_column_family_handle(EXPIRY)

    def close(self) -> None:
        """Close the store and let go of its lock (held until every handle on it is collected)."""
        self.db.close()
        del self.db, self._index
        gc.collect()

    def checkpoint(self) -> StoreCheckpoint | None:
        """Where the store stands; None for a store never committed to (or unreadable)."""
        raw = self.db.get(CHECKPOINT_KEY)
        if raw is None:
            return None
        try:
            return _checkpoint_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.error("the checkpoint of %s is unreadable; the store is rebuilt from Kafka", self.path)
            return None

    def clear(self) -> None:
        """Empty the store (before a rebuild): removed and made again."""
        self.close()
        remove_store(self.path)
        self.db = open_store(self.path, self.budget, (EXPIRY,))
        self._index = self.db.get_column_family_handle(EXPIRY)

    def get(self, key: bytes) -> tuple[float, bytes] | None:
        raw = self.db.get(key)
        if raw is None:
            return None
        return _expiry.unpack_from(raw)[0], raw[8:]

    def entries(self, after: bytes = b"") -> Iterator[tuple[bytes, float, bytes]]:
        iterator = self.db.iter()
        iterator.seek(after + b"\x00" if after else b"\x01")  # the checkpoint's key sorts first
        while iterator.valid():
            raw = iterator.value()
            yield iterator.key(), _expiry.unpack_from(raw)[0], raw[8:]
            iterator.next()

    def memory(self) -> dict[str, int]:
        """Bytes RocksDB holds for this store beyond its files, by kind (the block cache is the
        worker's, shared by its stores)."""
        families = (self.db, self.db.get_column_family(EXPIRY))
        return {
            "block_cache": int(self.db.property_int_value("rocksdb.block-cache-usage") or 0),
            "memtables": sum(
                int(f.property_int_value("rocksdb.cur-size-all-mem-tables") or 0) for f in families
            ),
            "table_readers": sum(
                int(f.property_int_value("rocksdb.estimate-table-readers-mem") or 0) for f in families
            ),
        }

    def estimated_entries(self) -> int:
        return max(0, int(self.db.property_int_value("rocksdb.estimate-num-keys") or 0) - 1)

    def write(
        self,
        entries: Iterable[tuple[bytes, float, bytes]],
        checkpoint: StoreCheckpoint | None,
        now: float | None = None,
    ) -> None:
        """Write ``entries`` in one atomic batch, with ``checkpoint`` (None: the store's is left
        as it is) and, given ``now``, the removal of entries that expired before it."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        if now is not None:
            self._expire(batch, now)  # first: an entry written again below must stay
        expiring: defaultdict[int, list[bytes]] = defaultdict(list)
        for key, expires, value in entries:
            batch.put(key, _expiry.pack(expires) + value)
            expiring[max(0, math.ceil(expires))].append(key)
        for second, keys in expiring.items():
            for start in range(0, len(keys), KEYS_PER_INDEX_ENTRY):
                self._sequence += 1
                index_key = _index.pack(second, self._sequence)
                batch.put(index_key, _packed(keys[start : start + KEYS_PER_INDEX_ENTRY]), self._index)
        if checkpoint is not None:
            batch.put(CHECKPOINT_KEY, _encoder.encode(checkpoint))
        self.db.write(batch)

    def _expire(self, batch: rocksdict.WriteBatch, now: float) -> None:
        """Add to ``batch`` the removal of the entries listed by index entries of seconds up to
        ``now`` that have expired (one written again since expires later, and stays)."""
        iterator = self.db.get_column_family(EXPIRY).iter()
        iterator.seek_to_first()
        last = None
        dropped = 0
        while iterator.valid() and dropped < EXPIRE_PER_COMMIT:
            index_key = iterator.key()
            if _index.unpack_from(index_key)[0] > now:
                break
            for key in _unpacked(iterator.value()):
                raw = self.db.get(key)
                if raw is not None and _expiry.unpack_from(raw)[0] <= now:
                    batch.delete(key)
                dropped += 1
            last = index_key
            iterator.next()
        if last is not None:
            batch.delete_range(b"", last + b"\x00", self._index)
