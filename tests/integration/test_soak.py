"""The soak run's short mode (`python -m bench.soak` is the long one): a worker fed at a steady
rate for a minute stays exact, keeps up, commits what it applied, and does not balloon."""

from __future__ import annotations

import pytest

from agents.settings import Settings
from bench.soak import run_soak

pytestmark = pytest.mark.kafka

RATE = 1500.0


def test_a_minute_at_a_steady_rate_stays_exact_and_keeps_up(local_stack: Settings) -> None:
    report = run_soak(local_stack, minutes=1.0, rate=RATE, every=5.0, seed=11)
    assert report.exact, (report.outcomes, report.expected_outcomes)
    assert report.produced >= RATE * 55
    summary = report.summary(warmup_seconds=20)
    # It keeps up: never more than ~5 s of input waiting, and nothing waiting at the end.
    assert summary["max_ingest_lag"] < RATE * 5, report.samples
    assert report.samples[-1].ingest_lag < RATE, report.samples
    assert summary["rss_mb_after_warmup"]["max"] < 400, report.samples
    # The KPI agent's offsets follow: a restart would not read the run's deltas again.
    assert 0 <= report.uncommitted_deltas <= 1, report.uncommitted_deltas
