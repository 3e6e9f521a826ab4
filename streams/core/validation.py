"""Turn one raw Kafka message into either a typed event or a bad row with its reason."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec

from streams.contracts.events import (
    EVENT_TYPES,
    SUPPORTED_SCHEMA_MODEL,
    EventBase,
    RawEvent,
    raw_event_decoder,
)
from streams.contracts.outputs import TOO_LARGE_KEEP_BYTES, BadReason, BadRow
from streams.contracts.versions import BAD_ROW_VERSION

#: How much of a too_large message a bad row keeps.


class Rejection(msgspec.Struct, frozen=True):
    """Why one payload was refused, before it is wrapped with its Kafka coordinates."""

    reason: BadReason
    message: str
    field_path: str | None = None


_PATH_IN_MESSAGE = re.compile(r" - at `(\$[^`]*)`$")
_MISSING_FIELD = re.compile(r"Object missing required field `([^`]*)`")


def decode_event(payload: bytes, max_bytes: int) -> RawEvent | Rejection:
    """Decode and validate ``payload``; never raises on bad input."""
    if len(payload) > max_bytes:
        return Rejection(BadReason.TOO_LARGE, f"event is {len(payload)} bytes; the limit is {max_bytes}")
    try:
        event = raw_event_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _classify_validation_error(payload, str(exc))
    except msgspec.DecodeError as exc:
        return Rejection(BadReason.NOT_JSON, f"not a JSON document: {exc}")
    except RecursionError:
        return Rejection(BadReason.TOO_DEEPLY_NESTED, "JSON nested deeper than the decoder allows")
    except UnicodeDecodeError as exc:
        return Rejection(BadReason.NOT_JSON, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
    model = int(event.schema_version.split("-", 1)[0])
    if model != SUPPORTED_SCHEMA_MODEL:
        return Rejection(
            BadReason.UNSUPPORTED_SCHEMA_VERSION,
            f"schema_version {event.schema_version} has MODEL {model}; this worker reads MODEL "
            f"{SUPPORTED_SCHEMA_MODEL}",
            "$.schema_version",
        )
    return event


def event_time(event: EventBase) -> datetime:
    """Event time, corrected for the client's clock skew when both client and collector
    timestamps are present: ``received_at - (sent_at - occurred_at)``."""
    if event.sent_at is not None and event.received_at is not None:
        return event.received_at - (event.sent_at - event.occurred_at)
    return event.occurred_at


def check_time_range(
    at: datetime, now: datetime, max_age_seconds: int, max_future_seconds: int
) -> Rejection | None:
    age = (now - at).total_seconds()
    if age > max_age_seconds:
        return Rejection(
            BadReason.TIMESTAMP_OUT_OF_RANGE,
            f"event time {at.isoformat()} is {age:.0f}s old; the limit is {max_age_seconds}s",
            "$.occurred_at",
        )
    if -age > max_future_seconds:
        return Rejection(
            BadReason.TIMESTAMP_OUT_OF_RANGE,
            f"event time {at.isoformat()} is {-age:.0f}s in the future; the limit is {max_future_seconds}s",
            "$.occurred_at",
        )
    return None


def decode_in_time(
    payload: bytes, max_bytes: int, now: datetime, max_age_seconds: int, max_future_seconds: int
) -> tuple[RawEvent, datetime] | Rejection:
    """The event and its (corrected) event time, or why it is a bad row: what decides whether
    a message moves its partition's watermark."""
    decoded = decode_event(payload, max_bytes)
    if isinstance(decoded, Rejection):
        return decoded
    at = event_time(decoded)
    out_of_range = check_time_range(at, now, max_age_seconds, max_future_seconds)
    return (decoded, at) if out_of_range is None else out_of_range


def _classify_validation_error(payload: bytes, detail: str) -> Rejection:
    match = _PATH_IN_MESSAGE.search(detail)
    path = match.group(1) if match else "$"
    if path == "$.type" or "missing required field `type`" in detail:
        event_type = _peek_type(payload)
        if event_type is not None and event_type not in EVENT_TYPES:
            return Rejection(BadReason.UNKNOWN_TYPE, f"unknown event type {event_type!r}", "$.type")
    missing = _MISSING_FIELD.match(detail)
    if missing:
        path = f"{path}.{missing.group(1)}"
    return Rejection(BadReason.SCHEMA_VIOLATION, detail, path)


class _TypeOnly(msgspec.Struct):
    type: str | None = None


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def _peek_type(payload: bytes) -> str | None:
    try:
        return _type_decoder.decode(payload).type
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def make_bad_row(
    rejection: Rejection,
    payload: bytes,
    topic: str,
    partition: int,
    offset: int,
    processor: str,
    scrub: Callable[[bytes], bytes] = bytes,
) -> BadRow:
    """Wrap a refused payload: ``scrub`` removes personal data before anything is kept, then a
    too_large payload is cut to its first TOO_LARGE_KEEP_BYTES."""
    size = len(payload)
    payload = scrub(payload)
    truncated = rejection.reason is BadReason.TOO_LARGE and size > TOO_LARGE_KEEP_BYTES
    if truncated:
        payload = payload[:TOO_LARGE_KEEP_BYTES]
    encoding: Literal["utf-8", "base64"]
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return BadRow(
        schema_version=BAD_ROW_VERSION,
        reason=rejection.reason,
        message=rejection.message,
        field_path=rejection.field_path,
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        payload_encoding=encoding,
        payload=text,
        payload_bytes=size,
        payload_truncated=truncated,
        processor=processor,
        failed_at=datetime.now(UTC),
    )


def payload_of(row: BadRow) -> bytes | None:
    """The payload a bad row kept, as bytes to send again; None when only its start was kept."""
    if row.payload_truncated:
        return None
    if row.payload_encoding == "base64":
        return base64.b64decode(row.payload)
    return row.payload.encode("utf-8")
