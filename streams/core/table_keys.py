"""The KPI table's key layout, in one place.

Every key is a JSON array that starts with its record kind and the delta partition it lives
on, so recovery can sort a table's entries by partition from their keys alone, without
decoding a value, and no kind can be mistaken for another whatever a campaign name holds:

- ``["cell", partition, window_seconds, window_start, channel, campaign]``: a cell's measures
  (``CellState``);
- ``["mark", partition, raw_partition]``: a raw partition's newest watermark mark (``MarkState``),
  and ``["mark", partition, raw_partition, counted_partition]`` as read on a partition of the
  repartitioned topic;
- ``["published_offset", partition]``: the last delta offset whose outputs the broker
  acknowledged;
- ``["alert", partition, rule, channel, campaign]``: a watched series' state (``SeriesState``).
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from streams.contracts.deltas import CellKey


class Kind(enum.StrEnum):
    CELL = "cell"
    MARK = "mark"
    #: Not "published": the layout before kinds had a ["published", partition] key, with cells
    #: that this one does not read, and taking its offset would skip their replay.
    PUBLISHED = "published_offset"
    ALERT = "alert"


class TableKey(NamedTuple):
    """A decoded table key: its kind, its delta partition and the rest of its parts."""

    kind: Kind
    partition: int
    parts: tuple[int | str, ...]

    def cell(self) -> CellKey:
        size, start, channel, campaign = self.parts
        return CellKey(int(size), int(start), str(channel), str(campaign))


_key_decoder = msgspec.json.Decoder(list[int | str])


def cell_key(partition: int, key: CellKey) -> bytes:
    return msgspec.json.encode((Kind.CELL, partition, *key))


def mark_key(partition: int, raw_partition: int, counted_partition: int | None = None) -> bytes:
    """A raw partition's mark; with ``counted_partition``, as read on that partition of the
    repartitioned topic."""
    if counted_partition is None:
        return msgspec.json.encode((Kind.MARK, partition, raw_partition))
    return msgspec.json.encode((Kind.MARK, partition, raw_partition, counted_partition))


def published_key(partition: int) -> bytes:
    return msgspec.json.encode((Kind.PUBLISHED, partition))


def alert_key(partition: int, rule: str, channel: str, campaign: str) -> bytes:
    return msgspec.json.encode((Kind.ALERT, partition, rule, channel, campaign))


def parse(raw: bytes) -> TableKey | None:
    """The key's kind, partition and parts; None for a key of no known layout."""
    try:
        kind, partition, *parts = _key_decoder.decode(raw)
        return TableKey(Kind(str(kind)), int(partition), tuple(parts))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError):
        return None


class Grouped(NamedTuple):
    #: Delta partition -> its entries (keys parsed, values left encoded).
    entries: dict[int, list[tuple[TableKey, bytes]]]
    #: Entries of no known layout (left out).
    unknown: int


def by_partition(entries: Iterable[tuple[bytes, bytes]]) -> Grouped:
    """A table's entries grouped by delta partition, in one pass."""
    grouped: defaultdict[int, list[tuple[TableKey, bytes]]] = defaultdict(list)
    unknown = 0
    for raw_key, raw_value in entries:
        key = parse(raw_key)
        if key is None:
            unknown += 1
        else:
            grouped[key.partition].append((key, raw_value))
    return Grouped(dict(grouped), unknown)
