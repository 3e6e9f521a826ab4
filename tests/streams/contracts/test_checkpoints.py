"""The commit point's round trip through an offset's metadata."""

from __future__ import annotations

from streams.contracts.checkpoints import CommitPoint


def test_a_commit_point_round_trips_through_the_offset_metadata() -> None:
    point = CommitPoint(120, 1_700_000_000.5, state_from=40, state_to=77)
    assert CommitPoint.from_commit(*point.as_commit()) == point
    assert CommitPoint.from_commit(*CommitPoint(3, None).as_commit()) == CommitPoint(3, None)
    for metadata in ("", "not json", "[1]", '{"watermark": "x", "state_from": -1, "state_to": true}'):
        assert CommitPoint.from_commit(9, metadata) == CommitPoint(9, None), metadata
