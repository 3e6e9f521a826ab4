"""Channel and campaign attribution, after GA4's default channel grouping.

Rules are tried in order; the first match names the channel and the rule. Traffic
that matches no rule is ``unassigned`` (counted, never dropped).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from streams.events import Utm

NO_CAMPAIGN = "(none)"

SEARCH_ENGINES = frozenset(
    {"google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "ecosia", "naver", "ask", "startpage"}
)
SOCIAL_SITES = frozenset(
    {
        "facebook",
        "instagram",
        "twitter",
        "x",
        "t.co",
        "linkedin",
        "lnkd.in",
        "pinterest",
        "reddit",
        "tiktok",
        "snapchat",
        "threads",
    }
)
VIDEO_SITES = frozenset({"youtube", "youtu.be", "vimeo", "twitch", "dailymotion"})
EMAIL_WORDS = frozenset({"email", "e-mail", "e_mail", "e mail", "newsletter"})
PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
DISPLAY_MEDIUM = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})


@dataclass(frozen=True, slots=True)
class Touch:
    """What attribution looks at, normalised (lower case, trimmed)."""

    source: str
    medium: str
    campaign: str
    referrer_site: str


@dataclass(frozen=True, slots=True)
class Attribution:
    channel: str
    campaign: str
    rule: str


def _site_of(referrer: str | None) -> str:
    if not referrer:
        return ""
    host = (urlsplit(referrer if "//" in referrer else f"//{referrer}").hostname or "").lower()
    return host.removeprefix("www.").removeprefix("m.")


def _site_matches(site: str, names: frozenset[str]) -> bool:
    """``google.co.uk`` matches ``google``; ``t.co`` matches itself."""
    if not site:
        return False
    if site in names:
        return True
    labels = site.split(".")
    return any(label in names for label in labels[:-1])


def _source_in(touch: Touch, names: frozenset[str]) -> bool:
    return _site_matches(touch.source, names)


Rule = tuple[str, str, Callable[[Touch], bool]]

RULES: tuple[Rule, ...] = (
    (
        "paid_search",
        "search source + paid medium",
        lambda t: _source_in(t, SEARCH_ENGINES) and bool(PAID_MEDIUM.match(t.medium)),
    ),
    (
        "paid_social",
        "social source + paid medium",
        lambda t: _source_in(t, SOCIAL_SITES) and bool(PAID_MEDIUM.match(t.medium)),
    ),
    (
        "paid_video",
        "video source + paid medium",
        lambda t: _source_in(t, VIDEO_SITES) and bool(PAID_MEDIUM.match(t.medium)),
    ),
    ("display", "display medium", lambda t: t.medium in DISPLAY_MEDIUM),
    ("email", "email source or medium", lambda t: t.source in EMAIL_WORDS or t.medium in EMAIL_WORDS),
    ("organic_search", "organic medium", lambda t: t.medium == "organic"),
    ("organic_search", "search engine source", lambda t: _source_in(t, SEARCH_ENGINES) and not t.medium),
    (
        "organic_social",
        "social source or medium",
        lambda t: (
            _source_in(t, SOCIAL_SITES)
            or t.medium
            in ("social", "social-network", "social-media", "sm", "social network", "social media")
        ),
    ),
    ("organic_video", "video source or medium", lambda t: _source_in(t, VIDEO_SITES) or t.medium == "video"),
    ("referral", "referral medium", lambda t: t.medium in ("referral", "app", "link")),
    (
        "organic_search",
        "search engine referrer",
        lambda t: not t.source and not t.medium and _site_matches(t.referrer_site, SEARCH_ENGINES),
    ),
    (
        "organic_social",
        "social referrer",
        lambda t: not t.source and not t.medium and _site_matches(t.referrer_site, SOCIAL_SITES),
    ),
    (
        "organic_video",
        "video referrer",
        lambda t: not t.source and not t.medium and _site_matches(t.referrer_site, VIDEO_SITES),
    ),
    ("referral", "other referrer", lambda t: not t.source and not t.medium and bool(t.referrer_site)),
    (
        "direct",
        "no source, medium or referrer",
        lambda t: (
            t.source in ("", "(direct)") and t.medium in ("", "(none)", "(not set)") and not t.referrer_site
        ),
    ),
)
UNASSIGNED = "unassigned"


def touch_of(utm: Utm | None, referrer: str | None, own_site: str = "") -> Touch:
    site = _site_of(referrer)
    if own_site and (site == own_site or site.endswith("." + own_site)):
        site = ""  # internal navigation is not a referral
    return Touch(
        source=((utm.source if utm else None) or "").strip().lower(),
        medium=((utm.medium if utm else None) or "").strip().lower(),
        campaign=((utm.campaign if utm else None) or "").strip().lower(),
        referrer_site=site,
    )


def attribute(touch: Touch) -> Attribution:
    campaign = touch.campaign or NO_CAMPAIGN
    for channel, rule_name, matches in RULES:
        if matches(touch):
            return Attribution(channel, campaign, rule_name)
    return Attribution(UNASSIGNED, campaign, "no rule matched")
