"""The KPI catalog: which additive measures each event adds to, and how KPIs derive from them.

Every KPI is computed from measures that add up across partitions, channels, campaigns and
windows (counts and sums). A ratio is published with its numerator and denominator so that
consumers can aggregate it correctly. Distinct counts that must be exact (sessions, unique
opens and clicks) are measures too: an event adds 1 only on the first sighting of its
(pseudonymized) key, which ingest checks in Redis together with the duplicate check.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from streams.contracts.events import (
    AdImpression,
    Click,
    EmailDelivered,
    EmailOpen,
    EmailSent,
    EventBase,
    Follow,
    Lead,
    PageEngagement,
    PageView,
    PostImpression,
    Share,
    Subscribe,
    Unfollow,
    Unsubscribe,
)
from streams.core.attribution import Attribution

ORGANIC_SEARCH = "organic_search"

#: Every additive measure an event can add to.
MEASURES: tuple[str, ...] = (
    "page_views",
    "organic_page_views",
    "blog_page_views",
    "sessions",
    "organic_sessions",
    "engagements",
    "engaged_ms",
    "emails_sent",
    "emails_delivered",
    "email_opens",
    "email_unique_opens",
    "email_machine_opens",
    "email_clicks",
    "email_unique_clicks",
    "ad_impressions",
    "ad_clicks",
    "post_impressions",
    "social_clicks",
    "other_clicks",
    "shares",
    "follows",
    "unfollows",
    "subscribes",
    "unsubscribes",
    "leads",
    "lead_value_cents",
)
#: Which event type feeds each measure: its bad rows mean the measure is undercounted.
MEASURE_SOURCES: dict[str, str] = {
    "page_views": "page_view",
    "organic_page_views": "page_view",
    "blog_page_views": "page_view",
    "sessions": "page_view",
    "organic_sessions": "page_view",
    "engagements": "page_engagement",
    "engaged_ms": "page_engagement",
    "emails_sent": "email_sent",
    "emails_delivered": "email_delivered",
    "email_opens": "email_open",
    "email_unique_opens": "email_open",
    "email_machine_opens": "email_open",
    "email_clicks": "click",
    "email_unique_clicks": "click",
    "ad_impressions": "ad_impression",
    "ad_clicks": "click",
    "post_impressions": "post_impression",
    "social_clicks": "click",
    "other_clicks": "click",
    "shares": "share",
    "follows": "follow",
    "unfollows": "unfollow",
    "subscribes": "subscribe",
    "unsubscribes": "unsubscribe",
    "leads": "lead",
    "lead_value_cents": "lead",
}
#: Measures also kept as a running total since counting began (window size 0).
RUNNING_TOTAL_MEASURES = frozenset({"subscribes", "unsubscribes"})
#: Measures that sum a quantity rather than count events.
SUM_MEASURES = frozenset({"engaged_ms", "lead_value_cents"})


@dataclass(frozen=True, slots=True)
class Unique:
    """A measure that counts a key once: ``namespace`` + ``key`` is checked for a first sighting."""

    measure: str
    namespace: str
    key: str


@dataclass(frozen=True, slots=True)
class Contribution:
    measures: tuple[tuple[str, int], ...]
    uniques: tuple[Unique, ...] = ()


def contribution(
    event: EventBase, attribution: Attribution, blog_path_prefix: str, pseudonymize_key: str | None
) -> Contribution:
    """What one valid, non-duplicate event adds. ``pseudonymize_key`` is the pseudonymized
    session id (page views) or recipient (email), used for unique measures."""
    organic = attribution.channel == ORGANIC_SEARCH
    if isinstance(event, PageView):
        measures = [("page_views", 1)]
        if organic:
            measures.append(("organic_page_views", 1))
        if event.page.path.startswith(blog_path_prefix):
            measures.append(("blog_page_views", 1))
        uniques: list[Unique] = []
        if pseudonymize_key is not None:
            uniques.append(Unique("sessions", "session", pseudonymize_key))
            if organic:
                uniques.append(Unique("organic_sessions", "organic-session", pseudonymize_key))
        return Contribution(tuple(measures), tuple(uniques))
    if isinstance(event, PageEngagement):
        return Contribution((("engagements", 1), ("engaged_ms", event.engaged_ms)))
    if isinstance(event, EmailSent):
        return Contribution((("emails_sent", 1),))
    if isinstance(event, EmailDelivered):
        return Contribution((("emails_delivered", 1),))
    if isinstance(event, EmailOpen):
        if event.machine_open:
            return Contribution((("email_machine_opens", 1),))
        once = f"{event.email.message_id}:{pseudonymize_key or ''}"
        return Contribution((("email_opens", 1),), (Unique("email_unique_opens", "open", once),))
    if isinstance(event, Click):
        if event.email is not None:
            once = f"{event.email.message_id}:{pseudonymize_key or ''}"
            return Contribution((("email_clicks", 1),), (Unique("email_unique_clicks", "click", once),))
        if event.ad is not None:
            return Contribution((("ad_clicks", 1),))
        if event.social is not None:
            return Contribution((("social_clicks", 1),))
        return Contribution((("other_clicks", 1),))
    if isinstance(event, AdImpression):
        return Contribution((("ad_impressions", 1),))
    if isinstance(event, PostImpression):
        return Contribution((("post_impressions", 1),))
    if isinstance(event, Share):
        return Contribution((("shares", 1),))
    if isinstance(event, Follow):
        return Contribution((("follows", 1),))
    if isinstance(event, Unfollow):
        return Contribution((("unfollows", 1),))
    if isinstance(event, Subscribe):
        return Contribution((("subscribes", 1),))
    if isinstance(event, Unsubscribe):
        return Contribution((("unsubscribes", 1),))
    if isinstance(event, Lead):
        cents = round((event.lead.value or 0) * 100)
        return Contribution((("leads", 1), ("lead_value_cents", cents)))
    return Contribution(())


@dataclass(frozen=True, slots=True)
class Kpi:
    """A KPI: ``sum(plus) - sum(minus)``, divided by ``denominator`` when it is a ratio."""

    name: str
    plus: tuple[str, ...]
    minus: tuple[str, ...] = ()
    denominator: str | None = None
    scale: float = 1.0
    description: str = ""

    @property
    def inputs(self) -> frozenset[str]:
        return frozenset((*self.plus, *self.minus, *((self.denominator,) if self.denominator else ())))


CATALOG: tuple[Kpi, ...] = (
    Kpi("page_views", ("page_views",), description="page views (traffic)"),
    Kpi("sessions", ("sessions",), description="sessions started"),
    Kpi("organic_traffic", ("organic_page_views",), description="page views from organic search"),
    Kpi("organic_sessions", ("organic_sessions",), description="sessions started from organic search"),
    Kpi("blog_traffic", ("blog_page_views",), description="page views under the blog prefix"),
    Kpi(
        "time_on_page_seconds",
        ("engaged_ms",),
        denominator="engagements",
        scale=0.001,
        description="mean engaged seconds per page view that reported engagement",
    ),
    Kpi("net_subscribers", ("subscribes",), ("unsubscribes",), description="subscribes - unsubscribes"),
    Kpi("net_follows", ("follows",), ("unfollows",), description="follows - unfollows"),
    Kpi("post_impressions", ("post_impressions",), description="times a post appeared in a feed"),
    Kpi("shares", ("shares",), description="shares of posts"),
    Kpi("emails_delivered", ("emails_delivered",), description="emails delivered"),
    Kpi(
        "email_open_rate",
        ("email_unique_opens",),
        denominator="emails_delivered",
        description="unique human opens / delivered",
    ),
    Kpi("email_machine_opens", ("email_machine_opens",), description="opens by privacy proxies"),
    Kpi(
        "email_click_rate",
        ("email_unique_clicks",),
        denominator="emails_delivered",
        description="unique email clicks / delivered",
    ),
    Kpi(
        "ad_click_through_rate",
        ("ad_clicks",),
        denominator="ad_impressions",
        description="ad clicks / ad impressions",
    ),
    Kpi(
        "social_click_through_rate",
        ("social_clicks",),
        denominator="post_impressions",
        description="post clicks / post impressions",
    ),
    Kpi("leads", ("leads",), description="leads"),
    Kpi("lead_conversion_rate", ("leads",), denominator="sessions", description="leads / sessions"),
)


@dataclass(frozen=True, slots=True)
class KpiValue:
    kpi: str
    value: float | None
    numerator: int
    denominator: int | None


def evaluate(kpi: Kpi, measures: dict[str, int]) -> KpiValue:
    numerator = sum(measures.get(m, 0) for m in kpi.plus) - sum(measures.get(m, 0) for m in kpi.minus)
    if kpi.denominator is None:
        return KpiValue(kpi.name, numerator * kpi.scale, numerator, None)
    denominator = measures.get(kpi.denominator, 0)
    value = numerator * kpi.scale / denominator if denominator else None
    return KpiValue(kpi.name, value, numerator, denominator)


@functools.lru_cache(maxsize=1024)
def affected(changed: frozenset[str]) -> tuple[Kpi, ...]:
    """The KPIs whose value depends on any of the ``changed`` measures (few distinct sets
    occur: the measures of an event type or of a cell)."""
    return tuple(kpi for kpi in CATALOG if kpi.inputs & changed)
