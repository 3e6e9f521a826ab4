from types import SimpleNamespace

import pytest

from agents.kafka.fencing import GroupMembership, NotInGroupError, membership


def consumer_in(generation: int, member_id: str) -> object:
    """Only the coordinator state ``membership`` reads."""
    return SimpleNamespace(_coordinator=SimpleNamespace(generation=generation, member_id=member_id))


def test_membership_carries_the_group_generation_and_member() -> None:
    found = membership(consumer_in(4, "worker-1-abc"), "mkpi-ingest")  # type: ignore[arg-type]
    assert isinstance(found, GroupMembership) and found == "mkpi-ingest"
    assert (found.generation, found.member_id) == (4, "worker-1-abc")


@pytest.mark.parametrize(("generation", "member_id"), [(-1, ""), (-1, "worker-1-abc"), (3, "")])
def test_a_consumer_outside_the_group_may_not_commit(generation: int, member_id: str) -> None:
    """The broker skips its generation check for generation -1, so the refusal must be ours."""
    with pytest.raises(NotInGroupError, match="not in group mkpi-ingest now"):
        membership(consumer_in(generation, member_id), "mkpi-ingest")  # type: ignore[arg-type]
