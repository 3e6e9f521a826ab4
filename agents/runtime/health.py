"""Liveness and readiness of a worker, for orchestrators' probes.

Live: the event loop turns (a heartbeat task ticks every second; a loop blocked for good, or
the task gone, stops it). Ready: ingest owns raw partitions it has taken over, and the Faust
side is neither rebalancing nor recovering its table, so the worker counts and publishes (a
worker of one role is judged on its part only).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

#: A heartbeat older than this means the loop has stopped turning.
LIVENESS_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    #: What is wrong (empty when ok), for the probe's response body.
    reasons: tuple[str, ...] = ()


class Health:
    def __init__(
        self,
        ingest_partitions: Callable[[], int] | None,
        agent_recovering: Callable[[], bool] | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingest_partitions = ingest_partitions
        self.agent_recovering = agent_recovering
        self.monotonic = monotonic
        self.last_beat = monotonic()

    def beat(self) -> None:
        self.last_beat = self.monotonic()

    async def keep_beating(self) -> None:
        while True:
            self.beat()
            await asyncio.sleep(1.0)

    def live(self) -> Verdict:
        silent = self.monotonic() - self.last_beat
        if silent > LIVENESS_SECONDS:
            return Verdict(False, (f"the event loop has not turned for {silent:.0f}s",))
        return Verdict(True)

    def ready(self) -> Verdict:
        reasons = []
        if self.ingest_partitions is not None and self.ingest_partitions() == 0:
            reasons.append("ingest owns no raw partition yet (or more workers than partitions)")
        if self.agent_recovering is not None and self.agent_recovering():
            reasons.append("the KPI agent is rebalancing or recovering its table")
        return Verdict(not reasons, tuple(reasons))
