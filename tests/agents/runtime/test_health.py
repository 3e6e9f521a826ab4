"""Liveness and readiness verdicts (the probes of deploy/k8s)."""

from __future__ import annotations

from agents.runtime.health import LIVENESS_SECONDS, Health


def test_ready_once_ingest_owns_partitions_and_the_agent_is_not_recovering() -> None:
    partitions: list[int] = [0]
    recovering: list[str | None] = [
        "the KPI agent is recovering its table from the changelog (12 records left)"
    ]
    restoring: dict[int, int] = {2: 340}
    health = Health(lambda: partitions[0], lambda: recovering[0], lambda: restoring)
    assert health.ready().reasons == (
        "ingest is restoring its state from the journal (partition 2: 340 records left)",
        "the KPI agent is recovering its table from the changelog (12 records left)",
    )
    restoring.clear()
    assert health.ready().reasons[0] == "ingest owns no raw partition yet (or more workers than partitions)"
    partitions[0] = 3
    assert len(health.ready().reasons) == 1
    recovering[0] = None
    assert health.ready().ok


def test_live_while_the_heartbeat_ticks() -> None:
    now = [100.0]
    health = Health(lambda: 1, lambda: None, monotonic=lambda: now[0])
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
    agent_only = Health(ingest_partitions=None, agent_recovering=lambda: None)
    assert agent_only.ready().ok
