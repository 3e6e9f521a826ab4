"""The subject rule: which key keeps a subject's events together."""

from __future__ import annotations

import pytest

from streams.core.subjects import subject_key


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        (b'{"event_id":"e","user_id":"u","anonymous_id":"a","email":{"recipient":"r@x.io"}}', b"r@x.io"),
        (b'{"event_id":"e","user_id":"u","anonymous_id":"a"}', b"u"),
        (b'{"event_id":"e","anonymous_id":"a","email":{"message_id":"m"}}', b"a"),
        (b'{"event_id":"e","type":"post_impression"}', b"e"),
        (b'{"event_id":"e","session_id":"s","type":"page_view"}', b"s"),
        (b'{"event_id":"e","anonymous_id":"a","session_id":"s"}', b"a"),
        (b'{"event_id":"e","user_id":"","anonymous_id":"a"}', b"a"),
        (b'{"type":"page_view"}', None),
        (b"[1, 2]", None),
        (b'{"user_id": 5}', None),
        (b"\xff{", None),
        (b'{"extra":' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    ],
)
def test_an_email_events_recipient_else_the_user_else_the_device_else_the_session_else_the_event(
    payload: bytes, key: bytes | None
) -> None:
    assert subject_key(payload) == key
