"""Write the JSON Schemas in schemas/ from the typed models, so the two cannot drift apart.

The models are the single source of truth; ``mkpi schemas`` rewrites the files and
``mkpi schemas --check`` (run by the tests) fails when a committed file is stale.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from streams.alerts import AlertEvent
from streams.events import RawEvent
from streams.ingest import IngestReport, LateEvent
from streams.kpis import DeltaBatch, KpiUpdate
from streams.validation import BadRow

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True, slots=True)
class SchemaFile:
    path: str
    model: Any
    title: str
    description: str


SCHEMA_FILES: tuple[SchemaFile, ...] = (
    SchemaFile(
        "events/raw_event-1-0-0.json",
        RawEvent,
        "raw_event",
        "One raw marketing event per Kafka message on the raw topic; `type` selects the shape. "
        "Optional fields may be absent or null; unknown fields are ignored.",
    ),
    SchemaFile(
        "outputs/kpi_update-1-1-0.json",
        KpiUpdate,
        "kpi_update",
        "Value of one KPI in one window. On <prefix>.kpi-updates (compacted): the latest value, "
        "open or final. On <prefix>.kpi-windows: the final result of a closed window "
        "(revision 0), then one message per late correction (revision 1, 2, ...); keep the "
        "highest revision. Key on both: the JSON array "
        "[kpi, window_seconds, window_start_unix_seconds, channel, campaign].",
    ),
    SchemaFile(
        "outputs/late_event-1-0-0.json",
        LateEvent,
        "late_event",
        "A valid event that came too late for some or all of its windows (past end + grace + "
        "retention by its raw partition's watermark), on <prefix>.late-events.",
    ),
    SchemaFile(
        "outputs/bad_row-1-0-0.json",
        BadRow,
        "bad_row",
        "A raw message that was not counted, with why, on <prefix>.bad-rows.",
    ),
    SchemaFile(
        "outputs/ingest_report-1-1-0.json",
        IngestReport,
        "ingest_report",
        "What one ingest flush did with its raw messages, on <prefix>.ingest-accounting. Summed "
        "over the topic (read_committed), it accounts for every raw message exactly once.",
    ),
    SchemaFile(
        "internal/kpi_delta-2-0-0.json",
        DeltaBatch,
        "kpi_delta",
        "Internal, on <prefix>.kpi-deltas, no key: a batch of one ingest flush for one partition. "
        "deltas: increments of cells whose channel and campaign hash to this partition (at most "
        "500 per message); marks: the event-time watermarks of the raw partitions the flush read, "
        "in the flush's last message to every partition, applied after its deltas.",
    ),
    SchemaFile(
        "outputs/alert-1-0-0.json",
        AlertEvent,
        "alert",
        'A drop alert on <prefix>.alerts, keyed by the JSON array ["alert", rule, channel, '
        "campaign]: one firing event when an incident opens, one resolved event when it closes, "
        "with the same incident_id. After a worker restart an event may come again with the same "
        "incident_id and status; keep one.",
    ),
)


def _clean_descriptions(node: Any) -> Any:
    """Docstring descriptions with their indentation removed: msgspec 0.23 began doing this
    itself, so the files come out the same whichever version is installed."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def render(schema_file: SchemaFile) -> str:
    generated: dict[str, Any] = _clean_descriptions(msgspec.json.schema(schema_file.model))
    document = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"mkpi/{schema_file.path.removesuffix('.json')}",
        "title": schema_file.title,
        "description": schema_file.description,
        **{k: v for k, v in generated.items() if k not in ("title", "description")},
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def stale_files(root: Path) -> list[str]:
    return [
        f.path
        for f in SCHEMA_FILES
        if not (root / f.path).exists() or (root / f.path).read_text(encoding="utf-8") != render(f)
    ]


def write_all(root: Path) -> list[str]:
    written = []
    for schema_file in SCHEMA_FILES:
        target = root / schema_file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(schema_file), encoding="utf-8")
        written.append(schema_file.path)
    return written
