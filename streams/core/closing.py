"""Window life cycle on one delta partition: open, closed (final result), revised, expired.

The KPI engine keeps one ``PartitionWindows`` per delta partition it owns. It indexes the cells
stored in the table by window, holds the newest watermark mark of every raw partition, and
answers which cells a new low watermark closes and which it expires. Everything here is pure;
the engine reads and writes the table, the agent the topics.

A window of size s starting at t is
- open while the low watermark is below end(s, t) + grace;
- closed from then on: each of its cells emits its final result (revision 0) once, and a delta
  that still reaches it (an event late, but within retention) emits the next revision;
- expired once the low watermark reaches end + grace + retention: its cells leave the table
  (ingest counts later events as late instead of sending deltas for them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container
from typing import Annotated

import msgspec

from streams.contracts.deltas import ALL_TIME, CellKey, WatermarkMark
from streams.core.cells import CellState
from streams.core.watermarks import Source, expected_sources, low_watermark
from streams.core.windows import WindowPolicy

Window = tuple[int, int]


class MarkState(msgspec.Struct, frozen=True, kw_only=True):
    """A raw partition's newest mark as the table stores it, per delta partition."""

    mark: WatermarkMark
    applied_offset: Annotated[int, msgspec.Meta(description="Offset of the mark on its delta partition.")]


def merge_mark(stored: MarkState | None, mark: WatermarkMark, offset: int) -> MarkState | None:
    """The state after ``mark`` (read at ``offset``); None when it was applied before. A mark
    never moves a watermark back."""
    if stored is None:
        return MarkState(mark=mark, applied_offset=offset)
    if offset <= stored.applied_offset:
        return None
    previous = stored.mark.watermark
    if previous is not None and (mark.watermark is None or mark.watermark < previous):
        mark = msgspec.structs.replace(mark, watermark=previous)
    return MarkState(mark=mark, applied_offset=offset)


def close_cell(state: CellState, closed_by: int) -> CellState:
    """The cell once its window has closed: its final result is revision 0."""
    return msgspec.structs.replace(state, revision=0, closed_by=closed_by)


class PartitionWindows:
    """Index and watermarks of one delta partition."""

    def __init__(self, policy: WindowPolicy) -> None:
        self.policy = policy
        #: The newest mark of each (counted partition, raw partition); the counted partition is
        #: None for marks of ingest counting the raw topic itself.
        self.marks: dict[tuple[int | None, int], WatermarkMark] = {}
        self.raw_partitions = 0
        #: Partitions of the repartitioned topic ingest counts; None: it counts the raw topic.
        self.counted_partitions: int | None = None
        self._low: float | None = None
        self._low_is_current = True
        self._cells: defaultdict[Window, set[CellKey]] = defaultdict(set)
        self._open: defaultdict[Window, set[CellKey]] = defaultdict(set)
        self._closed_by: defaultdict[int, set[CellKey]] = defaultdict(set)

    def __len__(self) -> int:
        return sum(len(cells) for cells in self._cells.values())

    def add(self, key: CellKey, state: CellState) -> None:
        window = (key.window_seconds, key.window_start)
        self._cells[window].add(key)
        if state.revision is None:
            self._open[window].add(key)
        else:
            self._open[window].discard(key)
            if state.closed_by is not None:
                self._closed_by[state.closed_by].add(key)

    def record_mark(self, mark: WatermarkMark) -> None:
        """The newest mark of its source. The kind of the newest mark decides which sources
        windows wait for: a deployment that changes how the raw topic is keyed changes them."""
        self.marks[(mark.counted_partition, mark.raw_partition)] = mark
        self.raw_partitions = max(self.raw_partitions, mark.raw_partitions)
        if mark.counted_partitions is None:
            self.counted_partitions = None
        else:
            self.counted_partitions = max(self.counted_partitions or 0, mark.counted_partitions)
        self._low_is_current = False

    @property
    def low_watermark(self) -> float | None:
        """The minimum over every expected source's newest mark (computed once per change)."""
        if not self._low_is_current:
            forwarded = self.counted_partitions is not None
            marks: dict[Source, WatermarkMark] = {
                m.source: m for (counted, _), m in self.marks.items() if (counted is not None) == forwarded
            }
            self._low = low_watermark(marks, expected_sources(self.raw_partitions, self.counted_partitions))
            self._low_is_current = True
        return self._low

    def _closed(self, window: Window, low: float | None) -> bool:
        """Whether ``low`` has passed the window's close; running totals never close."""
        return low is not None and window[0] != ALL_TIME and self.policy.closes_at(*window) <= low

    def _expired(self, window: Window, low: float | None) -> bool:
        return low is not None and window[0] != ALL_TIME and self.policy.expires_at(*window) <= low

    def is_closed(self, key: CellKey) -> bool:
        return self._closed((key.window_seconds, key.window_start), self.low_watermark)

    def is_expired(self, key: CellKey) -> bool:
        return self._expired((key.window_seconds, key.window_start), self.low_watermark)

    def closed_by(self, offset: int) -> set[CellKey]:
        """Cells the mark at ``offset`` closed (to re-send their final results on a replay)."""
        return set(self._closed_by.get(offset, ()))

    def due(self) -> list[CellKey]:
        """Open cells of windows the low watermark has closed; the caller closes them all."""
        low = self.low_watermark
        if low is None:
            return []
        windows = [w for w, cells in self._open.items() if cells and self._closed(w, low)]
        due = [key for window in sorted(windows) for key in sorted(self._open.pop(window))]
        return due

    def expired(self, keep: Container[CellKey] = ()) -> list[CellKey]:
        """Cells of windows past retention, removed from the index; the caller deletes them.

        Cells in ``keep`` stay until a later call: the agent keeps those the current message
        changed, since its outputs are not out yet; were the cell deleted with the message's
        writes, a replay after a crash would find nothing to publish again."""
        low = self.low_watermark
        if low is None:
            return []
        windows = [w for w in self._cells if self._expired(w, low)]
        gone: list[CellKey] = []
        for window in sorted(windows):
            cells = self._cells.pop(window)
            kept = {key for key in cells if key in keep}
            gone.extend(sorted(cells - kept))
            if kept:
                self._cells[window] = kept
            else:
                self._open.pop(window, None)
        if gone:
            dropped = set(gone)
            for offset in list(self._closed_by):
                self._closed_by[offset] -= dropped
                if not self._closed_by[offset]:
                    del self._closed_by[offset]
        return gone
