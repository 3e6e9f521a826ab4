"""Liveness and readiness verdicts (the probes of deploy/k8s)."""

from __future__ import annotations

from agents.runtime.health import LIVENESS_SECONDS, Health


def test_ready_once_ingest_owns_partitions_and_the_agent_is_not_recovering() -> None:
    partitions, recovering = [0], [True]
    health = Health(lambda: partitions[0], lambda: recovering[0])
    verdict = health.ready()
    assert not verdict.ok and len(verdict.reasons) == 2
    partitions[0] = 3
    assert health.ready().reasons == ("the KPI agent is rebalancing or recovering its table",)
    recovering[0] = False
    assert health.ready().ok


def test_live_while_the_heartbeat_ticks() -> None:
    now = [100.0]
    health = Health(lambda: 1, lambda: False, monotonic=lambda: now[0])
    assert health.live().ok
    now[0] += LIVENESS_SECONDS + 1
    assert not health.live().ok and "has not turned for 31s" in health.live().reasons[0]
    health.beat()
    assert health.live().ok


def test_a_worker_of_one_role_is_judged_on_its_part_only() -> None:
    ingest_only = Health(ingest_partitions=lambda: 0, agent_recovering=None)
    assert ingest_only.ready().reasons == (
        "ingest owns no raw partition yet (or more workers than partitions)",
    )
    agent_only = Health(ingest_partitions=None, agent_recovering=lambda: False)
    assert agent_only.ready().ok
