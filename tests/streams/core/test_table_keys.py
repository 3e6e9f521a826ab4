"""The KPI table's key layout: kind and partition first, no kind mistaken for another."""

from __future__ import annotations

import msgspec

from streams.contracts.deltas import CellKey
from streams.core import table_keys
from streams.core.table_keys import Kind, TableKey


def every_kind(partition: int) -> dict[Kind, bytes]:
    return {
        Kind.CELL: table_keys.cell_key(partition, CellKey(0, 0, "0", "0")),
        Kind.MARK: table_keys.mark_key(partition, 0),
        Kind.PUBLISHED: table_keys.published_key(partition),
        Kind.ALERT: table_keys.alert_key(partition, "0", "0", "0"),
    }


def test_keys_of_each_kind_are_per_partition_and_never_another_kind() -> None:
    zero, one = every_kind(0), every_kind(1)
    assert len(set(zero.values()) | set(one.values())) == 8
    for kind, raw in zero.items():
        assert msgspec.json.decode(raw)[:2] == [kind.value, 0]


def test_a_key_parses_back_to_its_kind_partition_and_parts() -> None:
    cell = CellKey(60, 1_800_000_000, "organic_search", 'a "quoted", campaign')
    parsed = table_keys.parse(table_keys.cell_key(7, cell))
    assert parsed == TableKey(Kind.CELL, 7, (60, 1_800_000_000, "organic_search", 'a "quoted", campaign'))
    assert parsed.cell() == cell
    assert table_keys.parse(table_keys.alert_key(2, "r", "email", "*")) == TableKey(
        Kind.ALERT, 2, ("r", "email", "*")
    )


def test_keys_of_no_known_layout_are_left_out() -> None:
    # Keys of the layout before kinds: a cell, a mark, the published offset, an alert series.
    earlier = [[60, 0, "*", "*"], ["watermark", 0, 1], ["published", 0], ["alert", "rule", "*", "*"]]
    for raw in [msgspec.json.encode(key) for key in earlier] + [b"not json", b"[]"]:
        assert table_keys.parse(raw) is None, raw


def test_entries_are_grouped_by_partition_in_one_pass() -> None:
    entries = [(key, b"v%d" % p) for p in (0, 1, 2) for key in every_kind(p).values()]
    entries.append((b"garbage", b"x"))
    grouped, unknown = table_keys.by_partition(entries)
    assert sorted(grouped) == [0, 1, 2] and unknown == 1
    assert [key.kind for key, _ in grouped[1]] == [Kind.CELL, Kind.MARK, Kind.PUBLISHED, Kind.ALERT]
    assert {value for _, value in grouped[2]} == {b"v2"}
