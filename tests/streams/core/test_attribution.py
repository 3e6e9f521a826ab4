"""Table-driven checks of the channel rules against GA4's default channel grouping."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import msgspec
import pytest

from streams.contracts.events import RawEvent, Utm
from streams.core.attribution import DEFAULT_RULES_FILE, NO_CAMPAIGN, ChannelRules, RulesError, touch_of

RULES = ChannelRules.load()

# (utm source, utm medium, referrer, channel): cases from GA4's published definitions.
CASES = [
    ("google", "organic", None, "organic_search"),
    ("Google", "ORGANIC", None, "organic_search"),
    ("bing", None, None, "organic_search"),
    (None, None, "https://www.google.co.uk/search?q=a", "organic_search"),
    (None, None, "https://duckduckgo.com/", "organic_search"),
    ("google", "cpc", None, "paid_search"),
    ("bing", "ppc", None, "paid_search"),
    ("google", "paid-search", None, "paid_search"),
    ("google", "retargeting", None, "paid_search"),
    ("facebook", "cpc", None, "paid_social"),
    ("linkedin", "paid_social", None, "paid_social"),
    ("facebook", "social", None, "organic_social"),
    ("instagram", "referral", None, "organic_social"),
    ("crm", "social-network", None, "organic_social"),
    (None, None, "https://t.co/abc", "organic_social"),
    (None, None, "https://m.facebook.com/", "organic_social"),
    ("youtube", "cpv", None, "paid_video"),
    ("youtube", None, None, "organic_video"),
    ("vendor", "video", None, "organic_video"),
    (None, None, "https://www.youtube.com/watch", "organic_video"),
    ("newsletter", "email", None, "email"),
    ("crm", "e-mail", None, "email"),
    ("email", "anything", None, "email"),
    ("adnet", "display", None, "display"),
    ("adnet", "banner", None, "display"),
    ("adnet", "cpm", None, "display"),
    ("partner", "referral", None, "referral"),
    ("app-store", "app", None, "referral"),
    (None, None, "https://news.example.net/a", "referral"),
    (None, None, None, "direct"),
    ("(direct)", "(none)", None, "direct"),
    ("mystery", "carrier-pigeon", None, "unassigned"),
    ("", "", "not a url at all", "referral"),
]


@pytest.mark.parametrize(("source", "medium", "referrer", "channel"), CASES)
def test_channel_rules(source: str | None, medium: str | None, referrer: str | None, channel: str) -> None:
    utm = Utm(source=source, medium=medium) if (source or medium) else None
    result = RULES.attribute_touch(touch_of(utm, referrer))
    assert result.channel == channel
    assert result.rule


def test_campaign_is_normalised_and_missing_campaign_is_named() -> None:
    utm = Utm(source="google", medium="cpc", campaign="  Spring_SALE ")
    assert RULES.attribute_touch(touch_of(utm, None)).campaign == "spring_sale"
    assert RULES.attribute_touch(touch_of(None, None)).campaign == NO_CAMPAIGN


def test_own_site_referrer_is_internal_navigation() -> None:
    touch = touch_of(None, "https://www.shop.example.com/pricing", own_sites=("shop.example.com",))
    assert RULES.attribute_touch(touch).channel == "direct"


def event(kind: str, **fields: object) -> RawEvent:
    base = {"type": kind, "schema_version": "1-0-0", "event_id": "e", "occurred_at": "2026-11-27T10:00:00Z"}
    return msgspec.json.decode(json.dumps({**base, **fields}), type=RawEvent)


@pytest.mark.parametrize(
    ("raw", "channel"),
    [
        (event("email_open", email={"message_id": "m"}, utm={"source": "google", "medium": "cpc"}), "email"),
        (event("click", email={"message_id": "m"}), "email"),
        (event("ad_impression", ad={"placement": "search"}), "paid_search"),
        (event("ad_impression", ad={"placement": "display"}), "display"),
        (event("click", ad={"placement": "social"}), "paid_social"),
        (event("ad_impression", ad={"placement": "video"}), "paid_video"),
        (event("post_impression", social={"network": "linkedin"}), "organic_social"),
        (event("post_impression", social={"network": "linkedin", "paid": True}), "paid_social"),
        (event("follow", social={"network": "instagram"}), "organic_social"),
        (event("subscribe", social={"network": "youtube", "account_id": "chan"}), "organic_video"),
        (event("lead", lead={"form_id": "f"}, utm={"source": "google", "medium": "cpc"}), "paid_search"),
        (
            event("lead", lead={"form_id": "f"}, page={"path": "/", "referrer": "https://bing.com/"}),
            "organic_search",
        ),
    ],
)
def test_intrinsic_channels_of_email_ads_and_social(raw: RawEvent, channel: str) -> None:
    assert RULES.attribute(raw).channel == channel


def test_a_rules_file_overrides_the_built_in_rules(tmp_path: Path) -> None:
    data = tomllib.loads(DEFAULT_RULES_FILE.read_text())
    data["lists"]["search"].append("kagi")
    custom = ChannelRules.from_mapping(data)
    assert custom.attribute_touch(touch_of(Utm(source="kagi"), None)).channel == "organic_search"
    assert RULES.attribute_touch(touch_of(Utm(source="kagi"), None)).channel == "unassigned"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "2-0-0"}, "version must be 1-x-y"),
        ({"rules": [{"channel": "x", "name": "n", "colour_is": "red"}]}, "unknown condition 'colour_is'"),
        ({"rules": [{"channel": "x", "name": "n", "source_in": "nope"}]}, "unknown list 'nope'"),
        ({"rules": [{"channel": "x", "name": "n", "medium_matches": "("}]}, "not a valid regex"),
        ({"rules": [{"channel": "x", "name": "n"}]}, "at least one condition"),
        ({"rules": [{"name": "n", "no_utm": True}]}, "needs 'channel'"),
    ],
)
def test_invalid_rules_files_are_refused_with_where_and_why(change: dict[str, object], message: str) -> None:
    data = {**tomllib.loads(DEFAULT_RULES_FILE.read_text()), **change}
    with pytest.raises(RulesError, match=message):
        ChannelRules.from_mapping(data)


def test_repeated_touches_keep_their_own_channel_while_cached() -> None:
    rules = ChannelRules.load()
    touches = [touch_of(Utm(source="google", medium="cpc"), None), touch_of(None, "https://www.google.com/")]
    first = [rules.attribute_touch(t) for t in touches]
    assert [a.channel for a in first] == ["paid_search", "organic_search"]
    assert [rules.attribute_touch(t) for t in reversed(touches)] == list(reversed(first))


# (utm source, utm medium, utm campaign, referrer, channel): the channels GA4 added to its
# default group, from its published definitions, and the order that decides between them.
GA4_CHANNEL_CASES = [
    ("google", "cpc", "spring-cross-network", None, "cross_network"),
    (None, None, "pmax cross-network", "https://www.google.com/", "cross_network"),
    ("amazon", "cpc", None, None, "paid_shopping"),
    ("partner", "paid", "summer_shopping", None, "paid_shopping"),
    ("partner", "ppc", "black-shop-days", None, "paid_shopping"),
    ("partner", "cpc", "workshop", None, "paid_other"),  # "workshop": no shop after a-d, f-z
    ("newsite", "paid-push", None, None, "paid_other"),
    ("ebay", "referral", None, None, "organic_shopping"),
    ("partner", "referral", "shopping-guide", None, "organic_shopping"),
    (None, None, None, "https://www.etsy.com/listing/1", "organic_shopping"),
    ("partner", "affiliate", None, None, "affiliates"),
    ("spotify", "audio", None, None, "audio"),
    ("sms", "text", None, None, "sms"),
    ("carrier", "sms", None, None, "sms"),
    ("app", "web-push", None, None, "mobile_push"),
    ("app", "mobile", None, None, "mobile_push"),
    ("app", "in-app-notification", None, None, "mobile_push"),
    ("firebase", "fcm", None, None, "mobile_push"),
    ("vendor", "explainer-video", None, None, "organic_video"),
    ("google", "referral", None, None, "organic_search"),  # search source before referral
    ("newsletter", None, None, None, "unassigned"),  # GA4 knows email sources by name only
]


@pytest.mark.parametrize(("source", "medium", "campaign", "referrer", "channel"), GA4_CHANNEL_CASES)
def test_the_whole_default_channel_group(
    source: str | None, medium: str | None, campaign: str | None, referrer: str | None, channel: str
) -> None:
    utm = Utm(source=source, medium=medium, campaign=campaign)
    assert RULES.attribute_touch(touch_of(utm, referrer)).channel == channel


def test_the_rules_know_all_of_ga4s_channels() -> None:
    ga4 = {
        "direct", "cross_network", "paid_shopping", "paid_search", "paid_social", "paid_video",
        "display", "paid_other", "organic_shopping", "organic_social", "organic_video",
        "organic_search", "email", "affiliates", "referral", "audio", "sms", "mobile_push",
        "unassigned",
    }  # fmt: skip
    assert RULES.channels == ga4
