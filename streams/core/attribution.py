"""Channel and campaign attribution from a versioned rules file (GA4-style channel grouping).

Rules are data (streams/core/channel_rules.toml, or MKPI_CHANNEL_RULES_FILE). They are read once
and compiled into plain predicates, so attributing an event is a few set lookups.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streams.contracts.events import AdRef, EventBase, SocialRef, Utm

NO_CAMPAIGN = "(none)"
UNASSIGNED = "unassigned"
DEFAULT_RULES_FILE = Path(__file__).with_name("channel_rules.toml")
SUPPORTED_RULES_MODEL = 1


class RulesError(ValueError):
    """The channel rules file is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class Touch:
    """What the rules look at, normalised: lower case, trimmed, referrer reduced to its host."""

    source: str
    medium: str
    campaign: str
    referrer_site: str

    @property
    def present(self) -> bool:
        """Whether there is a touch at all: a utm source, medium or campaign, or an external
        referrer (what can start a new session, in GA4's terms a new traffic source)."""
        return bool(self.source or self.medium or self.campaign or self.referrer_site)


@dataclass(frozen=True, slots=True)
class Attribution:
    channel: str
    campaign: str
    rule: str
    #: The event carries a touch (``Touch.present``).
    touched: bool = False


Predicate = Callable[[Touch], bool]

TOUCH_CACHE_SIZE = 100_000


def site_of(referrer: str | None) -> str:
    if not referrer:
        return ""
    try:
        host = urlsplit(referrer if "//" in referrer else f"//{referrer}").hostname or ""
    except ValueError:
        return ""
    return host.lower().removeprefix("www.").removeprefix("m.")


def site_in(site: str, names: frozenset[str]) -> bool:
    """``google.co.uk`` and ``news.google.com`` match ``google``; ``t.co`` matches itself."""
    if not site:
        return False
    if site in names:
        return True
    return any(label in names for label in site.split(".")[:-1])


@dataclass(frozen=True, slots=True)
class Rule:
    channel: str
    name: str
    conditions: tuple[Predicate, ...]

    def matches(self, touch: Touch) -> bool:
        return all(condition(touch) for condition in self.conditions)


@dataclass(frozen=True, slots=True)
class Intrinsic:
    email: str
    social_organic: str
    social_paid: str
    video_organic: str
    video_paid: str
    ad_placement: dict[str, str]


class ChannelRules:
    """The compiled rules of one file, and the intrinsic channels of email, social and ads."""

    def __init__(
        self, rules: tuple[Rule, ...], intrinsic: Intrinsic, lists: dict[str, frozenset[str]], version: str
    ):
        self.rules = rules
        self.intrinsic = intrinsic
        self.lists = lists
        self.version = version
        #: Touches repeat (a campaign's links, a search engine's referrer): each is matched
        #: against the rules once, until the cache is full, then it starts over.
        self._by_touch: dict[Touch, Attribution] = {}
        #: (utm, referrer, own sites) -> its touch: the same few repeat across a campaign's events.
        self._touches: dict[tuple[Utm | None, str | None, tuple[str, ...]], Touch] = {}

    @classmethod
    def configured(cls, rules_file: str) -> ChannelRules:
        """The rules of ``MKPI_CHANNEL_RULES_FILE``; empty: the built-in ones."""
        return cls.load(Path(rules_file) if rules_file else None)

    @classmethod
    def load(cls, path: Path | None = None) -> ChannelRules:
        source = path or DEFAULT_RULES_FILE
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RulesError(f"{source}: cannot read channel rules: {exc}") from exc
        return cls.from_mapping(data, str(source))

    @classmethod
    def from_mapping(cls, data: dict[str, Any], origin: str = "rules") -> ChannelRules:
        version = str(data.get("version", ""))
        if (
            not re.fullmatch(r"[1-9][0-9]*-[0-9]+-[0-9]+", version)
            or int(version.split("-")[0]) != SUPPORTED_RULES_MODEL
        ):
            raise RulesError(f"{origin}: version must be {SUPPORTED_RULES_MODEL}-x-y, got {version!r}")
        lists = {
            name: frozenset(str(v).lower() for v in values) for name, values in data.get("lists", {}).items()
        }
        rules = tuple(
            _compile_rule(raw, lists, f"{origin}: rule {index + 1}")
            for index, raw in enumerate(data.get("rules", []))
        )
        try:
            raw_intrinsic = dict(data["intrinsic"])
            intrinsic = Intrinsic(
                ad_placement={str(k): str(v) for k, v in raw_intrinsic.pop("ad_placement").items()},
                **{k: str(v) for k, v in raw_intrinsic.items()},
            )
        except (KeyError, TypeError) as exc:
            raise RulesError(
                f"{origin}: [intrinsic] needs email, social_organic, social_paid, video_organic, "
                f"video_paid and [intrinsic.ad_placement]: {exc}"
            ) from exc
        return cls(rules, intrinsic, lists, version)

    @property
    def channels(self) -> frozenset[str]:
        """Every channel these rules can attribute an event to."""
        intrinsic = self.intrinsic
        return frozenset(
            {rule.channel for rule in self.rules}
            | {intrinsic.email, intrinsic.social_organic, intrinsic.social_paid}
            | {intrinsic.video_organic, intrinsic.video_paid, UNASSIGNED}
            | set(intrinsic.ad_placement.values())
        )

    def attribute_touch(self, touch: Touch) -> Attribution:
        known = self._by_touch.get(touch)
        if known is None:
            if len(self._by_touch) >= TOUCH_CACHE_SIZE:
                self._by_touch.clear()
            known = self._by_touch[touch] = self._match(touch)
        return known

    def _match(self, touch: Touch) -> Attribution:
        campaign = touch.campaign or NO_CAMPAIGN
        for rule in self.rules:
            if rule.matches(touch):
                return Attribution(rule.channel, campaign, rule.name, touch.present)
        return Attribution(UNASSIGNED, campaign, "no rule matched", touch.present)

    def attribute(self, event: EventBase, own_sites: tuple[str, ...] = ()) -> Attribution:
        """The channel of ``event``: its intrinsic one if it has one, else by the rules."""
        referrer = event.page.referrer if event.page else None
        seen = (event.utm, referrer, own_sites)
        touch = self._touches.get(seen)
        if touch is None:
            if len(self._touches) >= TOUCH_CACHE_SIZE:
                self._touches.clear()
            touch = self._touches[seen] = touch_of(event.utm, referrer, own_sites)
        campaign = touch.campaign or NO_CAMPAIGN
        email = getattr(event, "email", None)
        if email is not None:
            return Attribution(self.intrinsic.email, campaign, "intrinsic: email")
        ad: AdRef | None = getattr(event, "ad", None)
        if ad is not None:
            channel = self.intrinsic.ad_placement.get(ad.placement, UNASSIGNED)
            return Attribution(channel, campaign, f"intrinsic: ad placement {ad.placement}")
        social: SocialRef | None = getattr(event, "social", None)
        if social is not None:
            video = site_in(social.network.strip().lower(), self.lists.get("video", frozenset()))
            if video:
                channel = self.intrinsic.video_paid if social.paid else self.intrinsic.video_organic
            else:
                channel = self.intrinsic.social_paid if social.paid else self.intrinsic.social_organic
            return Attribution(channel, campaign, f"intrinsic: {'paid ' if social.paid else ''}social")
        return self.attribute_touch(touch)


def touch_of(utm: Utm | None, referrer: str | None, own_sites: tuple[str, ...] = ()) -> Touch:
    site = site_of(referrer)
    if any(site == own or site.endswith("." + own) for own in own_sites):
        site = ""  # navigation inside the company's own site is not a referral
    return Touch(
        source=((utm.source if utm else None) or "").strip().lower(),
        medium=((utm.medium if utm else None) or "").strip().lower(),
        campaign=((utm.campaign if utm else None) or "").strip().lower(),
        referrer_site=site,
    )


def _compile_rule(raw: dict[str, Any], lists: dict[str, frozenset[str]], where: str) -> Rule:
    raw = dict(raw)
    try:
        channel, name = str(raw.pop("channel")), str(raw.pop("name"))
    except KeyError as exc:
        raise RulesError(f"{where}: needs {exc}") from None
    conditions: list[Predicate] = []

    def named_list(key: str) -> frozenset[str]:
        list_name = raw[key]
        if list_name not in lists:
            raise RulesError(f"{where} ({name}): {key} names unknown list {list_name!r}")
        return lists[list_name]

    def pattern(key: str) -> re.Pattern[str]:
        try:
            return re.compile(str(raw[key]))
        except re.error as exc:
            raise RulesError(f"{where} ({name}): {key} is not a valid regex: {exc}") from None

    for key in raw:
        if key in ("source_in", "referrer_in"):
            field = "source" if key == "source_in" else "referrer_site"
            conditions.append(_site_condition(field, named_list(key)))
        elif key in ("source_equals", "medium_in"):
            field = "source" if key == "source_equals" else "medium"
            conditions.append(_member_condition(field, frozenset(str(v).lower() for v in raw[key])))
        elif key in ("source_matches", "medium_matches", "campaign_matches"):
            conditions.append(_regex_condition(key.removesuffix("_matches"), pattern(key)))
        elif key == "no_utm":
            conditions.append(_flag_condition(lambda t: not t.source and not t.medium, bool(raw[key])))
        elif key == "has_referrer":
            conditions.append(_flag_condition(lambda t: bool(t.referrer_site), bool(raw[key])))
        else:
            raise RulesError(f"{where} ({name}): unknown condition {key!r}")
    if not conditions:
        raise RulesError(f"{where} ({name}): a rule needs at least one condition")
    return Rule(channel, name, tuple(conditions))


def _site_condition(field: str, names: frozenset[str]) -> Predicate:
    return lambda touch: site_in(getattr(touch, field), names)


def _member_condition(field: str, values: frozenset[str]) -> Predicate:
    return lambda touch: getattr(touch, field) in values


def _regex_condition(field: str, regex: re.Pattern[str]) -> Predicate:
    return lambda touch: regex.fullmatch(getattr(touch, field)) is not None


def _flag_condition(test: Predicate, wanted: bool) -> Predicate:
    return lambda touch: test(touch) == wanted
