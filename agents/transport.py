"""The Faust transport mkpi runs on: committed reads, and no commit ahead of the changelog.

It is Faust's stock aiokafka transport with two changes, registered under the URL scheme
``mkpi-kafka`` (see pyproject's ``faust.transports``):

- The consumer reads ``read_committed``. Ingest publishes deltas in Kafka transactions, and
  Faust reads ``read_uncommitted`` unless its own exactly-once mode is on (which has open
  bugs), so it would count deltas of aborted transactions.
- The producer's ``flush`` waits until every message handed to ``send_soon`` (table
  changelog writes) is acknowledged by the broker. Faust flushes before it commits consumer
  offsets, but its buffer's flush gives up after 0.1 s per message and does not see the
  message its sender task is holding, so an offset could be committed while the changelog
  write of the delta behind it was still in memory; a SIGKILL then lost that delta.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import FutureMessage

URL_SCHEME = "mkpi-kafka"

#: How long a flush waits for buffered writes before it fails the commit.
FLUSH_TIMEOUT_SECONDS = 60.0


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka takes the level only as a constructor argument and reads it in start();
        # the consumer is not started yet here.
        consumer._isolation_level = "read_committed"
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ReadCommittedConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class DurableFlushProducer(faust_aiokafka.Producer):
    """Tracks buffered sends until the broker acknowledges them; ``flush`` waits for all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: set[FutureMessage] = set()
        self._failures: list[BaseException] = []

    def send_soon(self, fut: FutureMessage) -> None:
        self._unacknowledged.add(fut)
        fut.add_done_callback(self._settle)
        super().send_soon(fut)

    def _settle(self, fut: asyncio.Future[Any]) -> None:
        self._unacknowledged.discard(fut)
        if not fut.cancelled() and (failure := fut.exception()) is not None:
            self._failures.append(failure)

    async def flush(self) -> None:
        """Raise rather than return while a buffered write is unsent or has failed: the caller
        is about to commit offsets that are only safe once those writes are durable. A failed
        write keeps failing every flush, so the worker stops instead of committing past it."""
        await super().flush()
        while pending := set(self._unacknowledged):
            _, not_done = await asyncio.wait(pending, timeout=FLUSH_TIMEOUT_SECONDS)
            if not_done:
                raise ProducerSendError(
                    f"{len(not_done)} buffered writes unacknowledged after {FLUSH_TIMEOUT_SECONDS}s"
                )
        if self._failures:
            raise ProducerSendError(
                f"{len(self._failures)} buffered writes failed, first: {self._failures[0]!r}"
            )


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = ReadCommittedConsumer
    Producer = DurableFlushProducer
