"""Bounded campaign labels: top N by recent volume, the rest folded, idle ones dropped."""

from __future__ import annotations

from streams.core.labels import OTHER, CampaignLabels


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_campaigns_fill_the_top_then_the_rest_fold_into_other() -> None:
    labels = CampaignLabels(top_n=2, idle_seconds=600, now=FakeClock())
    for campaign in ("a", "b", "c"):
        labels.observe(campaign, 1)
    assert [labels.label(c) for c in ("a", "b", "c", "*", "(none)")] == ["a", "b", OTHER, "*", "(none)"]
    assert not labels.has_own_series("c") and labels.has_own_series("*")


def test_reranking_follows_recent_volume_and_reports_demoted_campaigns() -> None:
    clock = FakeClock()
    labels = CampaignLabels(top_n=2, idle_seconds=600, now=clock, rerank_seconds=60)
    labels.observe("a", 100)
    labels.observe("b", 50)
    labels.observe("c", 10)
    clock.now = 59
    assert not labels.rerank_due()
    clock.now = 60
    assert labels.rerank_due()
    assert labels.rerank().dropped == frozenset()
    labels.observe("c", 400)  # volumes are halved at each ranking: a 50, b 25, c 405
    changed = labels.rerank()
    assert changed.demoted == {"b"} and changed.idle == frozenset()
    assert (labels.label("a"), labels.label("b"), labels.label("c")) == ("a", OTHER, "c")


def test_idle_campaigns_lose_their_series() -> None:
    clock = FakeClock()
    labels = CampaignLabels(top_n=5, idle_seconds=300, now=clock)
    labels.observe("quiet", 10)
    clock.now = 200
    labels.observe("busy", 1)
    clock.now = 300
    changed = labels.rerank()
    assert changed.idle == {"quiet"} and changed.dropped == {"quiet"}
    assert labels.label("quiet") == OTHER and labels.label("busy") == "busy"
