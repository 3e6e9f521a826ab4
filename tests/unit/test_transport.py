"""Commits on guarded topics never pass what the agent finished."""

from __future__ import annotations

from faust.types import TP

from agents.transport import ProcessedOffsets


def test_commits_on_guarded_topics_stop_one_past_the_last_finished_offset() -> None:
    guard = ProcessedOffsets(["deltas"])
    moved, kept, other = TP("deltas", 0), TP("deltas", 1), TP("changelog", 0)
    assert guard.cap({moved: 50, other: 7}) == {other: 7}, "nothing finished yet: no commit"
    guard.done(moved, 9)
    guard.done(kept, 30)
    assert guard.cap({moved: 2400, kept: 20, other: 7}) == {moved: 10, kept: 20, other: 7}
    guard.forget([moved])
    assert guard.cap({moved: 2400, kept: 40}) == {kept: 31}
