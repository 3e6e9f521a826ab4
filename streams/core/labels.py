"""Bounded campaign labels for Prometheus: the top N campaigns by recent volume, the rest
folded into ``other``, and idle campaigns dropped.

Counters of a campaign outside the top N are added to ``campaign="other"``; gauges (KPI
values) exist only for the top N, since a ratio of the rest cannot be summed from them (the
``campaign="*"`` roll-up still covers every campaign). Volume is the number of counted
events, halved at every re-ranking, so the ranking follows the recent past. A campaign
without events for the idle timeout loses its series.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OTHER = "other"
#: Labels that are never folded: the roll-up over all campaigns, and events without one.
KEPT = frozenset({"*", "(none)"})


@dataclass(frozen=True, slots=True)
class Reranked:
    """Campaigns whose own series must go: out of the top N, or idle."""

    demoted: frozenset[str]
    idle: frozenset[str]

    @property
    def dropped(self) -> frozenset[str]:
        return self.demoted | self.idle


class CampaignLabels:
    def __init__(
        self,
        top_n: int,
        idle_seconds: float,
        now: Callable[[], float],
        rerank_seconds: float = 60.0,
    ) -> None:
        self.top_n = top_n
        self.idle_seconds = idle_seconds
        self.rerank_seconds = rerank_seconds
        self.now = now
        self._volume: dict[str, float] = {}
        self._last_seen: dict[str, float] = {}
        self._top: set[str] = set()
        self._last_rerank = now()

    def observe(self, campaign: str, events: int) -> None:
        if campaign in KEPT:
            return
        self._volume[campaign] = self._volume.get(campaign, 0.0) + events
        self._last_seen[campaign] = self.now()
        if campaign not in self._top and len(self._top) < self.top_n:
            self._top.add(campaign)  # room left: no need to wait for the next ranking

    def label(self, campaign: str) -> str:
        return campaign if campaign in KEPT or campaign in self._top else OTHER

    def has_own_series(self, campaign: str) -> bool:
        return campaign in KEPT or campaign in self._top

    def rerank_due(self) -> bool:
        return self.now() - self._last_rerank >= self.rerank_seconds

    def rerank(self) -> Reranked:
        """Forget idle campaigns, pick the new top N, and halve every volume."""
        now = self.now()
        self._last_rerank = now
        idle = {c for c, seen in self._last_seen.items() if now - seen >= self.idle_seconds}
        for campaign in idle:
            del self._volume[campaign], self._last_seen[campaign]
        ranked = sorted(self._volume, key=lambda c: (-self._volume[c], c))
        top = set(ranked[: self.top_n])
        demoted = (self._top - top) - idle
        self._top = top
        self._volume = {c: v / 2 for c, v in self._volume.items()}
        return Reranked(frozenset(demoted), frozenset(idle))
