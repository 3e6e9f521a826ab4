"""Typed models of the raw event contract (schemas/events/*.json is the public form).

Decoding goes straight from bytes into these structs with msgspec: types, required
fields and bounds are checked by the compiled decoder, not by interpreting a JSON
Schema per event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

#: The MODEL part of SchemaVer this worker understands (MODEL-REVISION-ADDITION).
SUPPORTED_SCHEMA_MODEL = 1

ShortText = Annotated[str, msgspec.Meta(max_length=256)]
LongText = Annotated[str, msgspec.Meta(max_length=4096)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
SchemaVersion = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]*-[0-9]+-[0-9]+$")]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Utm(msgspec.Struct, frozen=True, kw_only=True):
    source: ShortText | None = None
    medium: ShortText | None = None
    campaign: ShortText | None = None
    content: ShortText | None = None
    term: ShortText | None = None


class Page(msgspec.Struct, frozen=True, kw_only=True):
    path: LongText
    url: LongText | None = None
    referrer: LongText | None = None
    title: LongText | None = None


class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every raw event carries."""

    event_id: Identifier
    schema_version: SchemaVersion
    occurred_at: AwareTime
    sent_at: AwareTime | None = None
    received_at: AwareTime | None = None
    anonymous_id: Identifier | None = None
    user_id: Identifier | None = None
    session_id: Identifier | None = None
    utm: Utm | None = None


class PageView(EventBase, frozen=True, kw_only=True, tag="page_view"):
    page: Page


class PageEngagement(EventBase, frozen=True, kw_only=True, tag="page_engagement"):
    page: Page
    engaged_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)]


RawEvent = PageView | PageEngagement
EVENT_TYPES: tuple[str, ...] = ("page_view", "page_engagement")

raw_event_decoder: msgspec.json.Decoder[RawEvent] = msgspec.json.Decoder(RawEvent)
