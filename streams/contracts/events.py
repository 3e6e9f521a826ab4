"""Typed models of the raw event contract (schemas/events/*.json is the public form).

Decoding goes straight from bytes into these structs with msgspec: types, required
fields and bounds are checked by the compiled decoder, not by interpreting a JSON
Schema per event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, get_args

import msgspec

#: The MODEL part of SchemaVer this worker understands (MODEL-REVISION-ADDITION).
SUPPORTED_SCHEMA_MODEL = 1

ShortText = Annotated[str, msgspec.Meta(max_length=256)]
LongText = Annotated[str, msgspec.Meta(max_length=4096)]
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
SchemaVersion = Annotated[str, msgspec.Meta(pattern=r"^[1-9][0-9]*-[0-9]+-[0-9]+$")]
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Utm(msgspec.Struct, frozen=True, kw_only=True):
    """Campaign tags (utm_* query parameters) as the producer saw them."""

    source: ShortText | None = None
    medium: ShortText | None = None
    campaign: ShortText | None = None
    content: ShortText | None = None
    term: ShortText | None = None


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """Page context: where the event happened."""

    path: LongText
    url: LongText | None = None
    referrer: LongText | None = None
    title: LongText | None = None


class EmailRef(msgspec.Struct, frozen=True, kw_only=True):
    """One email message to one recipient. ``recipient`` (address or id) is pseudonymized."""

    message_id: Identifier
    recipient: ShortText | None = None
    list_id: Identifier | None = None


class SocialRef(msgspec.Struct, frozen=True, kw_only=True):
    """A social network, and the post or account (e.g. a video channel) concerned."""

    network: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    post_id: Identifier | None = None
    account_id: Identifier | None = None
    paid: bool | None = None


class AdRef(msgspec.Struct, frozen=True, kw_only=True):
    """An ad and where it ran: placement is search, display, social, video or other."""

    placement: Annotated[str, msgspec.Meta(pattern="^(search|display|social|video|other)$")]
    ad_id: Identifier | None = None
    network: ShortText | None = None


class LeadInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A lead form submission. ``email`` is pseudonymized."""

    form_id: Identifier
    value: Annotated[float, msgspec.Meta(ge=0, le=1e12)] | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None
    email: ShortText | None = None


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
    page: Page | None = None


class PageView(EventBase, frozen=True, kw_only=True, tag="page_view"):
    """A page was shown. Feeds traffic, organic traffic, blog traffic, sessions."""

    page: Page


class PageEngagement(EventBase, frozen=True, kw_only=True, tag="page_engagement"):
    """Engaged time on a page. Feeds time on page."""

    page: Page
    engaged_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)]


class EmailSent(EventBase, frozen=True, kw_only=True, tag="email_sent"):
    """An email left the sending platform."""

    email: EmailRef


class EmailDelivered(EventBase, frozen=True, kw_only=True, tag="email_delivered"):
    """An email reached the recipient's server. Denominator of open and email click rates."""

    email: EmailRef


class EmailOpen(EventBase, frozen=True, kw_only=True, tag="email_open"):
    """An email's open pixel loaded; ``machine_open`` marks privacy-proxy prefetches."""

    email: EmailRef
    machine_open: bool | None = None
    user_agent: LongText | None = None


class Click(EventBase, frozen=True, kw_only=True, tag="click"):
    """A click on an ad, a social post or a link in an email."""

    target_url: LongText | None = None
    email: EmailRef | None = None
    ad: AdRef | None = None
    social: SocialRef | None = None


class AdImpression(EventBase, frozen=True, kw_only=True, tag="ad_impression"):
    """An ad was shown."""

    ad: AdRef


class PostImpression(EventBase, frozen=True, kw_only=True, tag="post_impression"):
    """A social post appeared in someone's feed."""

    social: SocialRef


class Follow(EventBase, frozen=True, kw_only=True, tag="follow"):
    """Someone followed the company's account on a network."""

    social: SocialRef


class Unfollow(EventBase, frozen=True, kw_only=True, tag="unfollow"):
    """Someone stopped following the company's account."""

    social: SocialRef


class Share(EventBase, frozen=True, kw_only=True, tag="share"):
    """A post was shared."""

    social: SocialRef


class Subscribe(EventBase, frozen=True, kw_only=True, tag="subscribe"):
    """Someone subscribed to a (video) channel; ``social.account_id`` names the channel."""

    social: SocialRef


class Unsubscribe(EventBase, frozen=True, kw_only=True, tag="unsubscribe"):
    """Someone unsubscribed from a channel."""

    social: SocialRef


class Lead(EventBase, frozen=True, kw_only=True, tag="lead"):
    """A lead form was submitted."""

    lead: LeadInfo


RawEvent = (
    PageView
    | PageEngagement
    | EmailSent
    | EmailDelivered
    | EmailOpen
    | Click
    | AdImpression
    | PostImpression
    | Follow
    | Unfollow
    | Share
    | Subscribe
    | Unsubscribe
    | Lead
)
EVENT_CLASSES: tuple[type[EventBase], ...] = get_args(RawEvent)
#: The ``type`` of each event class, e.g. ``TYPE_NAMES[PageView] == "page_view"``.
TYPE_NAMES: dict[type[EventBase], str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_CLASSES}
EVENT_TYPES: tuple[str, ...] = tuple(TYPE_NAMES.values())

raw_event_decoder: msgspec.json.Decoder[RawEvent] = msgspec.json.Decoder(RawEvent)
