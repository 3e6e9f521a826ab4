"""Whose an event is: the key that keeps a subject's events, and an event's retries, together.

Everything ingest remembers per subject (event ids seen, sessions, unique opens and clicks of a
recipient) lives with the partition that holds the subject's events, so every event of a
subject must reach the same partition: producers key raw events by ``subject_key`` (the
Segment and Snowplow convention), or ingest repartitions them by it.
"""

from __future__ import annotations

import msgspec


class _EmailRecipient(msgspec.Struct):
    recipient: str | None = None


class _Subject(msgspec.Struct):
    """The fields of a raw event that name its subject (everything else is skipped unread)."""

    event_id: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    session_id: str | None = None
    email: _EmailRecipient | None = None


_decoder = msgspec.json.Decoder(_Subject)


def subject_of(
    event_id: str | None,
    user_id: str | None,
    anonymous_id: str | None,
    recipient: str | None,
    session_id: str | None = None,
) -> str | None:
    """An email event's recipient (its opens and clicks count once per recipient), else the
    user, else the anonymous id; for an event of nobody its session (a session's events stay
    together, so it counts once), else its own id (its retries stay together)."""
    return recipient or user_id or anonymous_id or session_id or event_id or None


def subject_key(payload: bytes) -> bytes | None:
    """The Kafka key a raw event belongs under; None for a payload that is not a JSON object
    with any of those fields (it becomes a bad row wherever it lands)."""
    try:
        fields = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    recipient = fields.email.recipient if fields.email is not None else None
    subject = subject_of(fields.event_id, fields.user_id, fields.anonymous_id, recipient, fields.session_id)
    return None if subject is None else subject.encode()
