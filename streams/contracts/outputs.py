"""The models of what mkpi publishes: KPI values, bad rows, late events, ingest reports and
drop alerts. Their JSON Schemas in schemas/ are generated from these classes."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Literal, NamedTuple

import msgspec

from streams.contracts.deltas import json_key
from streams.contracts.events import AwareTime

#: A too_large bad row keeps this much of its payload.
TOO_LARGE_KEEP_BYTES = 4096


class KpiKey(NamedTuple):
    """Identity of one KPI value; the key of the KPI topics."""

    kpi: str
    window_seconds: int
    window_start: int
    channel: str
    campaign: str

    def encode(self) -> bytes:
        return json_key(self)

    @classmethod
    def decode(cls, raw: bytes) -> KpiKey:
        kpi, window_seconds, window_start, channel, campaign = msgspec.json.decode(
            raw, type=tuple[str, int, int, str, str]
        )
        return cls(kpi, window_seconds, window_start, channel, campaign)


class KpiUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """The latest value of one KPI in one window."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    kpi: Annotated[str, msgspec.Meta(description="A KPI of the catalog (docs/kpis.md).")]
    window_seconds: Annotated[
        int, msgspec.Meta(ge=0, description="0: the running total since counting began (net_subscribers).")
    ]
    window_start: AwareTime
    window_end: Annotated[datetime, msgspec.Meta(tz=True, description="Exclusive.")] | None
    channel: Annotated[str, msgspec.Meta(description="A channel, or '*' for all channels.")]
    campaign: Annotated[
        str, msgspec.Meta(description="Lower-cased utm campaign, '(none)' when absent, '*' for all.")
    ]
    value: Annotated[float | None, msgspec.Meta(description="null for a ratio whose denominator is 0.")]
    numerator: int
    denominator: Annotated[int | None, msgspec.Meta(description="null unless the KPI is a ratio.")]
    final: Annotated[bool, msgspec.Meta(description="The window has closed; this is its result.")] = False
    revision: Annotated[
        int | None,
        msgspec.Meta(
            description="null while open; 0 for the final result, then 1, 2, ... per late correction."
        ),
    ] = None
    updated_at: AwareTime


class BadReason(enum.StrEnum):
    NOT_JSON = "not_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    TOO_LARGE = "too_large"
    TOO_DEEPLY_NESTED = "too_deeply_nested"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    PROCESSING_ERROR = "processing_error"


class BadRow(msgspec.Struct, frozen=True, kw_only=True):
    """A raw message that was not counted, with why; identifiers in it are pseudonymized."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    reason: BadReason
    message: Annotated[str, msgspec.Meta(description="For people: what is wrong.")]
    field_path: Annotated[str | None, msgspec.Meta(description="JSON path of the failing field.")]
    source_topic: str
    source_partition: Annotated[int, msgspec.Meta(ge=0)]
    source_offset: Annotated[int, msgspec.Meta(ge=0)]
    payload_encoding: Literal["utf-8", "base64"]
    payload: Annotated[str, msgspec.Meta(description="The raw message: text if UTF-8, else base64.")]
    payload_bytes: Annotated[int, msgspec.Meta(ge=0, description="Size of the raw message.")]
    payload_truncated: Annotated[
        bool,
        msgspec.Meta(
            description=f"True when only the first {TOO_LARGE_KEEP_BYTES} bytes are kept (too_large)."
        ),
    ]
    processor: str
    failed_at: AwareTime


class LateEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A valid event too late for some or all of its windows: they had passed retention
    (end + grace + retention) by its raw partition's watermark. It points at the raw message
    instead of repeating it, so it carries no personal data."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    source_topic: str
    source_partition: int
    source_offset: int
    event_type: str
    event_time: Annotated[AwareTime, msgspec.Meta(description="Corrected event time.")]
    watermark: Annotated[AwareTime, msgspec.Meta(description="Its raw partition's watermark then.")]
    missed_window_seconds: Annotated[
        list[int], msgspec.Meta(description="Window sizes it was not counted in.")
    ]
    counted_window_seconds: Annotated[
        list[int], msgspec.Meta(description="Window sizes it was still counted in (empty: outcome late).")
    ]
    channel: str
    campaign: str


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one flush did with its raw messages; published in the flush's transaction, so the
    sum over the accounting topic is exact even across crashes."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    worker: str
    flushed_at: AwareTime
    next_offsets: Annotated[
        dict[str, int], msgspec.Meta(description="Raw partition -> next offset to read after this flush.")
    ]
    outcomes: Annotated[
        dict[str, int],
        msgspec.Meta(description="valid, bad, duplicate and late (past retention in every window size)."),
    ]
    bad_reasons: dict[str, int]
    events_by_type: Annotated[dict[str, int], msgspec.Meta(description="Valid events counted, by type.")]
    late_by_window: Annotated[
        dict[str, int],
        msgspec.Meta(description="Window size (seconds) -> valid or late events not counted in it."),
    ] = {}


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A drop alert on <prefix>.alerts: ``firing`` once when an incident opens, ``resolved``
    once when it closes; both carry the incident's id."""

    schema_version: Annotated[str, msgspec.Meta(pattern="^1-[0-9]+-[0-9]+$")]
    incident_id: Annotated[
        str, msgspec.Meta(description="Same on the firing and the resolved event, and on repeats.")
    ]
    status: Literal["firing", "resolved"]
    rule: str
    severity: Literal["info", "warning", "critical"]
    cause: Annotated[
        Literal["kpi_fell", "tracking_broke"],
        msgspec.Meta(description="tracking_broke: a source stopped sending or its events were rejected."),
    ]
    detail: Annotated[str, msgspec.Meta(description="What was seen when the incident opened, for people.")]
    kpi: str
    window_seconds: int
    window_start: Annotated[AwareTime, msgspec.Meta(description="The window that fired or resolved.")]
    first_breach_start: Annotated[
        AwareTime, msgspec.Meta(description="The incident's first breached window.")
    ]
    scope: Literal["overall", "channel", "campaign"]
    channel: Annotated[str, msgspec.Meta(description="'*': all channels.")]
    campaign: Annotated[str, msgspec.Meta(description="'*': all campaigns.")]
    value: Annotated[float | None, msgspec.Meta(description="The KPI in that window; null: no denominator.")]
    baseline: Annotated[float, msgspec.Meta(description="What the KPI was expected to be.")]
    breached_windows: Annotated[int, msgspec.Meta(ge=1)]
    emitted_at: AwareTime


def alert_key(rule: str, channel: str, campaign: str) -> bytes:
    """The Kafka key of a series' alert events: ``["alert", rule, channel, campaign]``."""
    return msgspec.json.encode(("alert", rule, channel, campaign))
