"""A Faust transport whose consumer reads committed data only.

Ingest publishes deltas in Kafka transactions. Faust's aiokafka consumer reads
``read_uncommitted`` unless Faust's own exactly-once mode is on (which has open bugs),
and would then count deltas of aborted transactions. This transport is Faust's stock
aiokafka transport with the isolation level set to ``read_committed``; it is
registered under the URL scheme ``mkpi-kafka`` (see pyproject's ``faust.transports``).
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

URL_SCHEME = "mkpi-kafka"


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


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = ReadCommittedConsumer
