from streams.core.continuity import DeltaContinuity, unapplied_messages


def test_a_fresh_partition_expects_offset_zero() -> None:
    continuity = DeltaContinuity()
    assert not continuity.gap(0)
    assert continuity.gap(3) == range(0, 3)
    assert not continuity.was_applied(0)


def test_offsets_up_to_the_one_after_the_last_published_need_no_read() -> None:
    continuity = DeltaContinuity(applied_through=41, published_through=41)
    assert not continuity.gap(41) and not continuity.gap(7) and not continuity.gap(42)
    assert continuity.was_applied(41) and continuity.was_applied(7) and not continuity.was_applied(42)


def test_a_jump_is_read_back_from_the_record_after_the_last_published() -> None:
    continuity = DeltaContinuity(applied_through=10, published_through=10)
    assert list(continuity.gap(12)) == [11]  # a commit marker at 11, or a lost record
    continuity.published(12)
    assert not continuity.gap(13)


def test_records_applied_but_not_published_are_read_back_as_replays() -> None:
    # The table holds the writes of records up to 30, but the outputs of 25 (the last record
    # published before 30) are the last acknowledged: a worker died publishing 30's outputs.
    continuity = DeltaContinuity(applied_through=30, published_through=25)
    assert not continuity.gap(26)
    assert continuity.gap(32) == range(26, 32)  # Faust resumed past 30
    assert continuity.was_applied(30) and not continuity.was_applied(31)


def test_progress_never_moves_back() -> None:
    continuity = DeltaContinuity(applied_through=20, published_through=18)
    continuity.applied(5)
    continuity.published(3)
    assert (continuity.applied_through, continuity.published_through) == (20, 18)
    continuity.published(22)
    assert (continuity.applied_through, continuity.published_through) == (22, 22)


def test_unapplied_messages_count_the_offsets_past_the_applied_one() -> None:
    # Partition 0: applied through 9, then records 10 and 11 and a marker at 12 (end 13): 3.
    # Partition 1: caught up but for the marker after its last record: 1. Partition 2: its end
    # is not known yet: 0. A partition the agent does not own is not counted.
    assert unapplied_messages({0: 13, 1: 8, 2: None, 3: 50}, {0: 9, 1: 6, 2: 4}) == 3 + 1
    assert unapplied_messages({0: 3}, {0: -1}) == 3  # nothing applied yet: offsets 0, 1, 2
    assert unapplied_messages({0: 5}, {0: 7}) == 0  # an end fetched before the last records
