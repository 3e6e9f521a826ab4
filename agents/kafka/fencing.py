"""Transactional offset commits fenced by consumer-group membership (KIP-447), which aiokafka
0.14 does not send.

aiokafka commits a transaction's consumer offsets with TxnOffsetCommit v0, which names only
the group. A worker that stalled through a rebalance (its partitions already given to another
worker) can then still commit its old batch: the group coordinator has nothing to check it
against, and the batch counts twice. From v3 on the request also carries the committer's
generation and member id, and the coordinator refuses a commit from an older generation or an
expelled member (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID); the transaction must then abort, and
its output is never seen by read_committed consumers.

``FencedTransactionalProducer.send_offsets_to_transaction`` takes a ``GroupMembership`` (read
from the consumer by ``membership``) in place of the group id and sends v3 with it.

The other half of KIP-447 is on the reading side: ``stable_committed_offsets`` asks for a
group's offsets with ``require_stable`` (OffsetFetch v7), so a new owner does not read them
while the previous owner's last transaction is still making its offsets visible.
"""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import CoordinationType
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    IllegalGenerationError,
    KafkaError,
    KafkaTimeoutError,
    UnknownMemberIdError,
    for_code,
)
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import OffsetAndMetadata


class NotInGroupError(KafkaError):  # type: ignore[misc]
    """The consumer is not a member of its group just now (expelled, or rejoining)."""


#: The answers that mean "you are no longer the owner": abort, do not retry.
FENCING_ERRORS = (IllegalGenerationError, UnknownMemberIdError, NotInGroupError)


class GroupMembership(str):
    """A consumer group id (the ``str`` value) with the committing consumer's generation and
    member id at the time of the commit."""

    generation: int
    member_id: str

    def __new__(cls, group_id: str, generation: int, member_id: str) -> GroupMembership:
        membership = super().__new__(cls, group_id)
        membership.generation = generation
        membership.member_id = member_id
        return membership


def membership(consumer: AIOKafkaConsumer, group_id: str) -> GroupMembership:
    """This consumer's current membership of ``group_id``; NotInGroupError when it is not a
    member (it was expelled, or is rejoining): a commit now could be stale."""
    coordinator = consumer._coordinator
    generation, member_id = coordinator.generation, coordinator.member_id
    if generation < 0 or not member_id:
        raise NotInGroupError(f"not in group {group_id} now (generation {generation}); not committing")
    return GroupMembership(group_id, generation, member_id)


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(("partition", Int32), ("error_code", Int16), ("tags", TaggedFields)),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("offset", Int64),
                        ("leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class FencedTxnOffsetCommitRequest(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> TxnOffsetCommitRequest_v3:
        return request_struct_class(*self._fields)


class FencedTxnOffsetCommitHandler(aiokafka_sender.TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler, sending v3 with the membership and treating a fencing answer as
    the end of this transaction (it aborts; the caller reads its input again)."""

    def create_request(self) -> FencedTxnOffsetCommitRequest:
        txn_manager = self._sender._txn_manager
        group: GroupMembership = self._group_id
        topics: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = {}
        for tp, offset in sorted(self._offsets.items()):
            topics.setdefault(tp.topic, []).append((tp.partition, offset.offset, -1, offset.metadata, {}))
        return FencedTxnOffsetCommitRequest(
            (
                txn_manager.transactional_id,
                str(group),
                txn_manager.producer_id,
                txn_manager.producer_epoch,
                group.generation,
                group.member_id,
                None,
                [(topic, partitions, {}) for topic, partitions in topics.items()],
                {},
            )
        )

    def handle_response(self, response: TxnOffsetCommitResponse_v3) -> float | None:
        for _, partitions, _ in response.topics:
            for _, error_code, _ in partitions:
                error_type = for_code(error_code)
                if error_type in FENCING_ERRORS:
                    group: GroupMembership = self._group_id
                    _fail_transaction(
                        self._sender._txn_manager,
                        error_type(f"group {group} refused generation {group.generation}: partitions moved"),
                    )
                    return None
        as_v0 = types.SimpleNamespace(
            errors=[
                (topic, [(p, code) for p, code, _ in partitions]) for topic, partitions, _ in response.topics
            ]
        )
        result: float | None = super().handle_response(as_v0)
        return result


def _fail_transaction(txn_manager: Any, error: Exception) -> None:
    """Make the transaction abortable only, and fail the caller's offsets future with ``error``.

    Not aiokafka's ``error_transaction``: that also forgets the partitions the transaction
    wrote to, so the abort that follows sends no EndTxn (the transaction looks empty), the
    broker keeps it open, and the producer's next transaction commits its records after all.
    """
    txn_manager._transition_to(TransactionState.ABORTABLE_ERROR)
    for _, _, offsets_committed in txn_manager._pending_txn_offsets:
        offsets_committed.set_exception(error)
    txn_manager._pending_txn_offsets.clear()


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("offset", Int64),
                        ("leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")), ("partitions", CompactArray(Int32)), ("tags", TaggedFields)
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, group_id: str, partitions: list[TopicPartition]) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self._fields: tuple[Any, ...] = (
            group_id,
            [(topic, sorted(parts), {}) for topic, parts in by_topic.items()],
            True,
            {},
        )

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        return request_struct_class(*self._fields)


#: Answers to an offset fetch that clear by themselves: ask again shortly.
_FETCH_AGAIN = frozenset({14, 15, 16, 88})  # load in progress, coordinator moving, unstable offset


async def stable_committed_offsets(
    admin: AIOKafkaAdminClient, group_id: str, partitions: list[TopicPartition], timeout: float = 120.0
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offsets of ``partitions``, waiting out transactions that are
    committing offsets for them (OffsetFetch v7 with ``require_stable``, KIP-447).

    Without it the broker answers with the offsets from before a transaction whose EndTxn has
    returned but whose markers are not yet written (a moment normally, as long as a broker
    restart takes otherwise), and a new owner reads that transaction's batch again.
    A partition without a committed offset is left out of the result.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            node_id = await admin.find_coordinator(group_id)
            response = await admin._send_request(StableOffsetFetchRequest(group_id, partitions), node_id)
        except KafkaError as error:
            # Right after a broker restart the coordinator is not known yet, or its connection
            # drops: ask again rather than leave the partitions assigned but never taken over.
            if not error.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        codes = {response.error_code} | {p[4] for _, parts, _ in response.topics for p in parts}
        if not codes & _FETCH_AGAIN:
            break
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(f"the offsets of group {group_id} stayed unstable for {timeout:.0f}s")
        await asyncio.sleep(0.2)
    if response.error_code:
        raise for_code(response.error_code)(f"fetching the offsets of group {group_id}")
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for topic, parts, _ in response.topics:
        for partition, offset, _, metadata, error_code, _ in parts:
            if error_code:
                raise for_code(error_code)(
                    f"fetching the offset of {topic}[{partition}] for group {group_id}"
                )
            if offset >= 0:
                offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, metadata or "")
    return offsets


class FencedTransactionalProducer(AIOKafkaProducer):  # type: ignore[misc]
    """A transactional producer whose offset commits are fenced when given a GroupMembership."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._sender._do_txn_offset_commit = types.MethodType(_txn_offset_commit, self._sender)


async def _txn_offset_commit(sender: Any, offsets: dict[Any, Any], group_id: str) -> None:
    """aiokafka's ``Sender._do_txn_offset_commit`` (0.14), with the fenced handler for a
    membership; the coordinator lookup and its error handling are aiokafka's own."""
    if not offsets:
        return
    if not isinstance(group_id, GroupMembership):
        raise TypeError("a fenced producer commits offsets for a GroupMembership (see membership())")
    try:
        node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
    except GroupAuthorizationFailedError as exc:
        sender._txn_manager.error_transaction(exc)
        return
    await FencedTxnOffsetCommitHandler(sender, offsets, group_id).do(node_id)
