from streams.continuity import Arrival, DeltaContinuity, unapplied_messages


def test_a_fresh_partition_expects_offset_zero() -> None:
    continuity = DeltaContinuity()
    assert continuity.arrival(0) is Arrival.NEXT
    assert continuity.arrival(3) is Arrival.AFTER_GAP
    assert continuity.gap(3) == range(0, 3)


def test_offsets_at_or_below_the_last_applied_are_replays() -> None:
    continuity = DeltaContinuity(applied_through=41)
    assert continuity.arrival(41) is Arrival.REPLAY
    assert continuity.arrival(7) is Arrival.REPLAY
    assert continuity.arrival(42) is Arrival.NEXT


def test_a_jump_is_read_back_from_the_record_after_the_last_applied() -> None:
    continuity = DeltaContinuity(applied_through=10)
    assert continuity.arrival(12) is Arrival.AFTER_GAP  # a commit marker at 11, or a lost record
    assert list(continuity.gap(12)) == [11]
    continuity.applied(12)
    assert continuity.arrival(13) is Arrival.NEXT


def test_applying_a_replay_never_moves_progress_back() -> None:
    continuity = DeltaContinuity(applied_through=20)
    continuity.applied(5)
    assert continuity.applied_through == 20


def test_unapplied_messages_count_the_offsets_past_the_applied_one() -> None:
    # Partition 0: applied through 9, then records 10 and 11 and a marker at 12 (end 13): 3.
    # Partition 1: caught up but for the marker after its last record: 1. Partition 2: its end
    # is not known yet: 0. A partition the agent does not own is not counted.
    assert unapplied_messages({0: 13, 1: 8, 2: None, 3: 50}, {0: 9, 1: 6, 2: 4}) == 3 + 1
    assert unapplied_messages({0: 3}, {0: -1}) == 3  # nothing applied yet: offsets 0, 1, 2
    assert unapplied_messages({0: 5}, {0: 7}) == 0  # an end fetched before the last records
