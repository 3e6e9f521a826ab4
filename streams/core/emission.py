"""What a delta message changed, as every output receives it, and the one interface they share.

The KPI agent publishes each delta message's changes to three sinks: Prometheus gauges
(``agents.metrics.series``), the Redis view (``agents.redis.view``) and the Kafka topics
(``agents.kafka.outputs``), in that order, so whoever reads a value on a topic finds it in the
view already. Each is a ``KpiSink`` of the same ``Emission``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from streams.contracts.outputs import KpiKey, KpiUpdate


@dataclass(frozen=True, slots=True)
class EncodedUpdate:
    key: KpiKey
    update: KpiUpdate
    #: The update as JSON, encoded once for every sink that stores or sends it.
    body: bytes


@dataclass(frozen=True, slots=True)
class Emission:
    #: The delta partition the message came from: its outputs go to the same partition number.
    delta_partition: int
    updates: list[EncodedUpdate] = field(default_factory=list)
    #: Alert events as (key, JSON body).
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The KPI table's writes of the message (None: deleted). They travel with the Kafka
    #: outputs, in the same produce batches, so both are durable before the message counts as
    #: published; the other sinks have nothing to do with them.
    table_changes: dict[bytes, bytes | None] = field(default_factory=dict)


class KpiSink(Protocol):
    async def emit(self, emission: Emission) -> None:
        """Deliver ``emission``; returns once it is stored (or waits until it can be)."""
