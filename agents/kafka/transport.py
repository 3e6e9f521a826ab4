"""The Faust transport mkpi runs on: committed reads, and no commit ahead of the changelog.

It is Faust's stock aiokafka transport with three changes, registered under the URL scheme
``mkpi-kafka`` (see pyproject's ``faust.transports``):

- The consumer reads ``read_committed``. Ingest publishes deltas in Kafka transactions, and
  Faust reads ``read_uncommitted`` unless its own exactly-once mode is on (which has open
  bugs), so it would count deltas of aborted transactions.
- The consumer's gaps (offsets without a record, such as transaction markers) leave out the
  record after them, which Faust counted twice and so held its commits back.
- The producer's ``flush`` waits until the broker has acknowledged every message handed to
  ``send_soon`` (the table changelog writes the agent makes through Faust: the offset whose
  outputs are out) before the flush began. Faust flushes before it
  commits consumer offsets, but its own buffer flush returns once no message went out for
  0.1 s, without the one its sender task holds (an offset could be committed while the
  changelog write of the delta behind it was still in memory: a SIGKILL then lost that
  delta), and under load it does not return until the buffer is empty (over 100 s in a
  soak run, while no offset was committed).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import TP, FutureMessage

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

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust calls this with the offsets between the last record read and the one just
        read, the latter included; its gap then holds that record's offset as well as the
        acknowledgement does. The duplicate ends every run of consecutive offsets Faust
        commits, so each commit moved a partition by two offsets (a soak run's delta topic
        was 2,400 messages behind after four minutes) and the list of acknowledged offsets
        grew without end. Only the offsets in between are a gap."""
        await super()._add_gap(tp, offset_from, offset_to - 1)


class Acknowledgements:
    """Sends handed to the producer and not yet acknowledged by the broker, and the failures.

    A flush waits only for the sends outstanding when it began: Faust computes the offsets
    to commit before it flushes, so later sends belong to later offsets. Waiting for every
    send instead never ends while the agent keeps writing (the set is never empty under
    load), and then no offset is committed at all."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[Any]] = set()
        self._failures: list[BaseException] = []

    def track(self, fut: asyncio.Future[Any]) -> None:
        self._pending.add(fut)
        fut.add_done_callback(self._settle)

    def _settle(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and (failure := fut.exception()) is not None:
            self._failures.append(failure)

    def outstanding(self) -> set[asyncio.Future[Any]]:
        """The sends not acknowledged yet, to wait for with ``settled``."""
        return set(self._pending)

    async def settled(self, sends: set[asyncio.Future[Any]], timeout: float) -> None:
        """Return once ``sends`` are acknowledged; raise when one is still unacknowledged
        after ``timeout`` seconds, or when any send so far has failed."""
        if sends:
            _, not_done = await asyncio.wait(sends, timeout=timeout)
            if not_done:
                raise ProducerSendError(f"{len(not_done)} buffered writes unacknowledged after {timeout}s")
        if self._failures:
            raise ProducerSendError(
                f"{len(self._failures)} buffered writes failed, first: {self._failures[0]!r}"
            )


class DurableFlushProducer(faust_aiokafka.Producer):
    """Tracks buffered sends until the broker acknowledges them; ``flush`` waits for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acknowledgements = Acknowledgements()

    def send_soon(self, fut: FutureMessage) -> None:
        self.acknowledgements.track(fut)
        super().send_soon(fut)

    async def flush(self) -> None:
        """Raise rather than return while a write made before the flush is unsent or has
        failed: the caller is about to commit offsets that are only safe once those writes
        are durable. A failed write keeps failing every flush, so the worker stops instead of
        committing past it. (Faust's own flush is not called: it waits until its buffer is
        empty, which under load took over 100 s while the agent kept writing.)"""
        await self.acknowledgements.settled(self.acknowledgements.outstanding(), FLUSH_TIMEOUT_SECONDS)


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = ReadCommittedConsumer
    Producer = DurableFlushProducer
