"""Liveness and readiness of a worker, for orchestrators' probes.

Live: the event loop turns (a heartbeat task ticks every second; a loop blocked for good, or
the task gone, stops it). Ready: ingest owns raw partitions it has taken over (their state
restored), and the Faust side is neither rebalancing nor recovering its table, so the worker
counts and publishes (a worker of one role is judged on its part only). While not ready, the
reasons say what it waits for, and how much of a restore is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
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
        agent_recovering: Callable[[], str | None] | None,
        ingest_restoring: Callable[[], Mapping[int, int]] = dict,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ingest_partitions = ingest_partitions
        #: Why the KPI agent does not publish yet (rebalancing, recovering), None when it does.
        self.agent_recovering = agent_recovering
        #: Raw partitions whose state ingest is restoring, with the journal records left.
        self.ingest_restoring = ingest_restoring
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
        restoring = self.ingest_restoring()
        if restoring:
            left = ", ".join(f"partition {p}: {n} records left" for p, n in sorted(restoring.items()))
            reasons.append(f"ingest is restoring its state from the journal ({left})")
        elif self.ingest_partitions is not None and self.ingest_partitions() == 0:
            reasons.append("ingest owns no raw partition yet (or more workers than partitions)")
        if self.agent_recovering is not None and (why := self.agent_recovering()) is not None:
            reasons.append(why)
        return Verdict(not reasons, tuple(reasons))
