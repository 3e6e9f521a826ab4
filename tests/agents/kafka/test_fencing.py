from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError, KafkaError

from agents.kafka.fencing import GroupMembership, NotInGroupError, membership, stable_committed_offsets


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


class CoordinatorComingBack:
    """An admin client whose group coordinator is unknown for its first ``misses`` lookups, as
    right after a broker restart; then it answers an offset fetch with no committed offsets."""

    def __init__(self, misses: int, error: type[KafkaError]) -> None:
        self.misses = misses
        self.error = error
        self.lookups = 0

    async def find_coordinator(self, group_id: str) -> int:
        self.lookups += 1
        if self.lookups <= self.misses:
            raise self.error(f"no coordinator for {group_id} yet")
        return 1

    async def _send_request(self, request: object, node_id: int) -> object:
        return SimpleNamespace(error_code=0, topics=[])


async def test_the_committed_offsets_are_asked_again_while_the_coordinator_is_not_back() -> None:
    admin = CoordinatorComingBack(3, GroupCoordinatorNotAvailableError)
    offsets = await stable_committed_offsets(admin, "group", [TopicPartition("raw", 0)])  # type: ignore[arg-type]
    assert offsets == {} and admin.lookups == 4


async def test_an_error_that_does_not_clear_is_raised_at_once() -> None:
    admin = CoordinatorComingBack(1, GroupAuthorizationFailedError)
    with pytest.raises(GroupAuthorizationFailedError):
        await stable_committed_offsets(admin, "group", [TopicPartition("raw", 0)])  # type: ignore[arg-type]
    assert admin.lookups == 1
