"""The KPI agent's Prometheus series: gauges on the newest window of each series (the agent's
Prometheus sink, ``streams.core.emission``), and the campaign label policy (top N campaigns by
volume get their own series)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from agents.metrics.registry import Metrics
from streams.contracts.deltas import ALL, CellKey, is_drill_down
from streams.contracts.outputs import KpiKey
from streams.core.catalog import KPI_UNITS, SUM_MEASURES, Unit
from streams.core.cells import window_label
from streams.core.emission import Emission
from streams.core.labels import CampaignLabels

Series = tuple[str, int, str, str]


class WindowGauges:
    """Keeps a value gauge (one per unit) and its window-start gauge on the newest window of
    each series."""

    def __init__(self, values: dict[Unit, Any], starts: Any) -> None:
        self.values = values
        self.starts = starts
        self._newest_start: dict[Series, int] = {}

    def observe(self, key: KpiKey, value: float | None) -> None:
        series = (key.kpi, key.window_seconds, key.channel, key.campaign)
        if key.window_start < self._newest_start.get(series, key.window_start):
            return
        self._newest_start[series] = key.window_start
        labels = (key.kpi, window_label(key.window_seconds), key.channel, key.campaign)
        self.values[KPI_UNITS[key.kpi]].labels(*labels).set(float("nan") if value is None else value)
        self.starts.labels(*labels).set(key.window_start)

    def drop_campaigns(self, campaigns: frozenset[str]) -> None:
        self.drop_where(lambda channel, campaign: campaign in campaigns)

    def drop_where(self, dropped: Callable[[str, str], bool]) -> None:
        """Remove the series of every (channel, campaign) ``dropped`` names."""
        for series in [s for s in self._newest_start if dropped(s[2], s[3])]:
            kpi, size, channel, campaign = series
            labels = (kpi, window_label(size), channel, campaign)
            self.values[KPI_UNITS[kpi]].remove(*labels)
            self.starts.remove(*labels)
            del self._newest_start[series]


class CampaignSeries:
    """Applies ``CampaignLabels`` to the agent's metrics: folds counters, skips gauges of
    campaigns outside the top N, and removes the series of dropped campaigns."""

    def __init__(self, metrics: Metrics, labels: CampaignLabels, gauges: list[WindowGauges]) -> None:
        self.metrics = metrics
        self.labels = labels
        self.gauges = gauges
        self._counters: defaultdict[str, set[tuple[str, str]]] = defaultdict(set)

    def observe(self, key: CellKey, measures: dict[str, int], smallest_window: bool) -> None:
        """Rank campaigns by the deltas of the smallest window (each event once), and count
        those in the raw counters."""
        if key.channel == ALL:
            events = sum(n for m, n in measures.items() if m not in SUM_MEASURES) if smallest_window else 0
            self.labels.observe(key.campaign, events)
        if smallest_window:
            self._count(key, measures)

    def _count(self, key: CellKey, measures: dict[str, int]) -> None:
        campaign = self.labels.label(key.campaign)
        for measure, amount in measures.items():
            self.metrics.count_measure(measure, key.channel, campaign, amount)
            self._counters[campaign].add((measure, key.channel))
        if self.labels.rerank_due():
            dropped = self.labels.rerank().dropped
            for campaign in dropped:
                for measure, channel in self._counters.pop(campaign, ()):
                    self.metrics.remove_measure(measure, channel, campaign)
            for gauges in self.gauges:
                gauges.drop_campaigns(dropped)

    def has_gauges(self, campaign: str) -> bool:
        return self.labels.has_own_series(campaign)


class GaugeSink:
    """The newest value of every series of a campaign with series of its own, on the gauges of
    the current window and of the last closed one."""

    def __init__(self, campaigns: CampaignSeries, current: WindowGauges, last_closed: WindowGauges) -> None:
        self.campaigns = campaigns
        self.current = current
        self.last_closed = last_closed

    async def emit(self, emission: Emission) -> None:
        for encoded in emission.updates:
            key, update = encoded.key, encoded.update
            if self.campaigns.has_gauges(key.campaign) and not is_drill_down(key.channel, key.campaign):
                self.current.observe(key, update.value)
                if update.final:
                    self.last_closed.observe(key, update.value)
