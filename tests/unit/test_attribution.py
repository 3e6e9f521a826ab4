"""Table-driven checks of the channel rules against GA4's default channel grouping."""

import pytest

from streams.attribution import NO_CAMPAIGN, attribute, touch_of
from streams.events import Utm

CASES = [
    # (source, medium, campaign, referrer, channel)
    ("google", "organic", None, None, "organic_search"),
    ("Google", "ORGANIC", None, None, "organic_search"),
    ("bing", None, None, None, "organic_search"),
    (None, None, None, "https://www.google.co.uk/search?q=a", "organic_search"),
    (None, None, None, "https://duckduckgo.com/", "organic_search"),
    ("google", "cpc", "brand", None, "paid_search"),
    ("bing", "ppc", None, None, "paid_search"),
    ("google", "paid-search", None, None, "paid_search"),
    ("facebook", "cpc", None, None, "paid_social"),
    ("linkedin", "paid_social", None, None, "paid_social"),
    ("facebook", "social", None, None, "organic_social"),
    (None, None, None, "https://t.co/abc", "organic_social"),
    (None, None, None, "https://m.facebook.com/", "organic_social"),
    ("youtube", "cpv", None, None, "paid_video"),
    ("youtube", None, None, None, "organic_video"),
    (None, None, None, "https://www.youtube.com/watch", "organic_video"),
    ("newsletter", "email", None, None, "email"),
    ("crm", "e-mail", None, None, "email"),
    ("adnet", "display", None, None, "display"),
    ("adnet", "banner", None, None, "display"),
    ("partner", "referral", None, None, "referral"),
    (None, None, None, "https://news.example.net/a", "referral"),
    (None, None, None, None, "direct"),
    ("(direct)", "(none)", None, None, "direct"),
    ("mystery", "carrier-pigeon", None, None, "unassigned"),
]


@pytest.mark.parametrize(("source", "medium", "campaign", "referrer", "channel"), CASES)
def test_channel_rules(
    source: str | None, medium: str | None, campaign: str | None, referrer: str | None, channel: str
) -> None:
    utm = Utm(source=source, medium=medium, campaign=campaign) if (source or medium or campaign) else None
    result = attribute(touch_of(utm, referrer))
    assert result.channel == channel
    assert result.rule


def test_campaign_is_normalised_and_missing_campaign_is_named() -> None:
    assert (
        attribute(touch_of(Utm(source="google", medium="cpc", campaign="  Spring_SALE "), None)).campaign
        == "spring_sale"
    )
    assert attribute(touch_of(None, None)).campaign == NO_CAMPAIGN


def test_own_site_referrer_is_internal_navigation() -> None:
    touch = touch_of(None, "https://www.shop.example.com/pricing", own_site="shop.example.com")
    assert attribute(touch).channel == "direct"
