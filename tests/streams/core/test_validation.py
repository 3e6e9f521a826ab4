import base64
import json
from datetime import UTC, datetime

import pytest

from streams.contracts.events import PageView
from streams.contracts.outputs import BadReason
from streams.core.validation import Rejection, decode_event, make_bad_row, payload_of

VALID = {
    "type": "page_view",
    "schema_version": "1-0-0",
    "event_id": "abc",
    "occurred_at": "2026-11-27T10:00:00.5+03:30",
    "page": {"path": "/blog/x", "referrer": "https://www.google.com/"},
    "utm": {"source": "google", "medium": "organic"},
}


def encode(**changes: object) -> bytes:
    event = {**VALID, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


def test_valid_page_view_decodes_with_an_aware_time() -> None:
    event = decode_event(encode(), 10_000)
    assert isinstance(event, PageView)
    assert event.occurred_at.utcoffset() is not None
    assert event.occurred_at == datetime(2026, 11, 27, 6, 30, 0, 500_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "reason", "path"),
    [
        (b"", BadReason.NOT_JSON, None),
        (b"{oops", BadReason.NOT_JSON, None),
        (b"\xff\xfe", BadReason.NOT_JSON, None),
        (b"[1]", BadReason.SCHEMA_VIOLATION, "$"),
        (encode(type="purchase"), BadReason.UNKNOWN_TYPE, "$.type"),
        (encode(type=None), BadReason.SCHEMA_VIOLATION, "$.type"),
        (encode(event_id=None), BadReason.SCHEMA_VIOLATION, "$.event_id"),
        (encode(event_id=""), BadReason.SCHEMA_VIOLATION, "$.event_id"),
        (encode(occurred_at="2026-11-27T10:00:00"), BadReason.SCHEMA_VIOLATION, "$.occurred_at"),
        (encode(page={"referrer": "x"}), BadReason.SCHEMA_VIOLATION, "$.page.path"),
        (encode(page={"path": 5}), BadReason.SCHEMA_VIOLATION, "$.page.path"),
        (encode(utm={"source": "x" * 300}), BadReason.SCHEMA_VIOLATION, "$.utm.source"),
        (encode(schema_version="2-0-0"), BadReason.UNSUPPORTED_SCHEMA_VERSION, "$.schema_version"),
        (encode(schema_version="one"), BadReason.SCHEMA_VIOLATION, "$.schema_version"),
    ],
)
def test_each_bad_payload_gets_its_reason_and_field(
    payload: bytes, reason: BadReason, path: str | None
) -> None:
    result = decode_event(payload, 10_000)
    assert isinstance(result, Rejection)
    assert (result.reason, result.field_path) == (reason, path)
    assert result.message


def test_too_large_is_refused_before_decoding() -> None:
    result = decode_event(encode(), 50)
    assert isinstance(result, Rejection) and result.reason is BadReason.TOO_LARGE


def test_bad_row_keeps_utf8_payload_as_text_and_other_bytes_as_base64() -> None:
    rejection = Rejection(BadReason.NOT_JSON, "nope")
    text_row = make_bad_row(rejection, "{é".encode(), "raw", 2, 41, "test")
    assert (text_row.payload_encoding, text_row.payload) == ("utf-8", "{é")
    binary_row = make_bad_row(rejection, b"\xff\x00", "raw", 2, 42, "test")
    assert binary_row.payload_encoding == "base64"
    assert base64.b64decode(binary_row.payload) == b"\xff\x00"
    assert (binary_row.source_topic, binary_row.source_partition, binary_row.source_offset) == ("raw", 2, 42)


@pytest.mark.parametrize("payload", [b'{"type":"page_view","extra":"caf\xc3\xa9"}', b"\xff\xfe not utf-8"])
def test_a_bad_rows_payload_comes_back_as_it_was_kept(payload: bytes) -> None:
    row = make_bad_row(Rejection(BadReason.NOT_JSON, "x"), payload, "raw", 0, 1, "test")
    assert payload_of(row) == payload


def test_a_payload_cut_to_its_start_is_not_sent_again() -> None:
    row = make_bad_row(Rejection(BadReason.TOO_LARGE, "x"), b"{" + b" " * 100_000 + b"}", "raw", 0, 1, "test")
    assert row.payload_truncated and payload_of(row) is None
