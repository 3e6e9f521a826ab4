"""The KPI catalog: which additive measures each event adds to, and how KPIs derive from them.

Every KPI is computed from measures that add up across partitions, channels, campaigns and
windows (counts and sums). A ratio is published with its numerator and denominator so that
consumers can aggregate it correctly. Distinct counts that must be exact (unique opens and
clicks) are measures too: an email event adds 1 only on the first sighting of its
(pseudonymized) key, which ingest looks up in the partition's state. Sessions
are counted once each, by the event that starts them (``streams.core.sessions``).
"""

from __future__ import annotations

import enum
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


#: Event types that belong to a session (on the company's site): their channel and campaign
#: are the session's. Email, ad and social events keep their own (intrinsic) channel.
SESSION_SCOPED = (PageView, PageEngagement, Lead)


def session_scoped(event: EventBase) -> bool:
    """Whether ``event`` happens on the site, in a session: page views, engagement, leads and
    clicks that are not on an email, an ad or a social post."""
    if isinstance(event, Click):
        return event.email is None and event.ad is None and event.social is None
    return isinstance(event, SESSION_SCOPED)


def measures_of(
    event: EventBase, attribution: Attribution, blog_path_prefix: str, starts_session: bool
) -> tuple[tuple[str, int], ...]:
    """The additive measures one valid, non-duplicate event adds, attributed to
    ``attribution`` (its session's, for site events). ``starts_session``: the event is the
    first of its session, which is counted with it."""
    organic = attribution.channel == ORGANIC_SEARCH
    measures: list[tuple[str, int]] = []
    if starts_session:
        measures.append(("sessions", 1))
        if organic:
            measures.append(("organic_sessions", 1))
    if isinstance(event, PageView):
        measures.append(("page_views", 1))
        if organic:
            measures.append(("organic_page_views", 1))
        if event.page.path.startswith(blog_path_prefix):
            measures.append(("blog_page_views", 1))
    elif isinstance(event, PageEngagement):
        measures += (("engagements", 1), ("engaged_ms", event.engaged_ms))
    elif isinstance(event, EmailOpen):
        measures.append(("email_machine_opens" if event.machine_open else "email_opens", 1))
    elif isinstance(event, Click):
        if event.email is not None:
            measures.append(("email_clicks", 1))
        elif event.ad is not None:
            measures.append(("ad_clicks", 1))
        elif event.social is not None:
            measures.append(("social_clicks", 1))
        else:
            measures.append(("other_clicks", 1))
    elif isinstance(event, Lead):
        cents = round((event.lead.value or 0) * 100)
        measures += (("leads", 1), ("lead_value_cents", cents))
    else:
        plain = PLAIN_COUNTS.get(type(event))
        if plain is not None:
            measures.append((plain, 1))
    return tuple(measures)


#: Event types that add 1 to one measure and nothing else.
PLAIN_COUNTS: dict[type[EventBase], str] = {
    EmailSent: "emails_sent",
    EmailDelivered: "emails_delivered",
    AdImpression: "ad_impressions",
    PostImpression: "post_impressions",
    Share: "shares",
    Follow: "follows",
    Unfollow: "unfollows",
    Subscribe: "subscribes",
    Unsubscribe: "unsubscribes",
}


def uniques_of(event: EventBase, recipient_key: str | None) -> tuple[Unique, ...]:
    """The distinct counts an email event may add to: a human open, or a click, of a message
    by a recipient counts once per published cell. ``recipient_key`` is the pseudonymized
    recipient."""
    if isinstance(event, EmailOpen) and not event.machine_open:
        return (Unique("email_unique_opens", "open", f"{event.email.message_id}:{recipient_key or ''}"),)
    if isinstance(event, Click) and event.email is not None:
        return (Unique("email_unique_clicks", "click", f"{event.email.message_id}:{recipient_key or ''}"),)
    return ()


class Unit(enum.Enum):
    """What a KPI's value measures, which decides how it is shown and which metric holds it."""

    COUNT = "count"  # events, sessions, visitors (net counts may be negative)
    RATIO = "ratio"  # a fraction, 0 to 1
    SECONDS = "seconds"


@dataclass(frozen=True, slots=True)
class Kpi:
    """A KPI: ``sum(plus) - sum(minus)``, divided by ``denominator`` when it is a ratio."""

    name: str
    plus: tuple[str, ...]
    minus: tuple[str, ...] = ()
    denominator: str | None = None
    scale: float = 1.0
    description: str = ""
    unit: Unit = Unit.COUNT

    @property
    def inputs(self) -> frozenset[str]:
        return frozenset((*self.plus, *self.minus, *((self.denominator,) if self.denominator else ())))


CATALOG: tuple[Kpi, ...] = (
    Kpi("page_views", ("page_views",), description="page views (traffic)"),
    Kpi("sessions", ("sessions",), description="sessions started (counted in their channel)"),
    Kpi("organic_traffic", ("organic_page_views",), description="page views from organic search"),
    Kpi("organic_sessions", ("organic_sessions",), description="sessions started from organic search"),
    Kpi("blog_traffic", ("blog_page_views",), description="page views under the blog prefix"),
    Kpi(
        "time_on_page_seconds",
        ("engaged_ms",),
        denominator="engagements",
        scale=0.001,
        description="mean engaged seconds per page view that reported engagement",
        unit=Unit.SECONDS,
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
        unit=Unit.RATIO,
    ),
    Kpi("email_machine_opens", ("email_machine_opens",), description="opens by privacy proxies"),
    Kpi(
        "email_click_rate",
        ("email_unique_clicks",),
        denominator="emails_delivered",
        description="unique email clicks / delivered",
        unit=Unit.RATIO,
    ),
    Kpi(
        "ad_click_through_rate",
        ("ad_clicks",),
        denominator="ad_impressions",
        description="ad clicks / ad impressions",
        unit=Unit.RATIO,
    ),
    Kpi(
        "social_click_through_rate",
        ("social_clicks",),
        denominator="post_impressions",
        description="post clicks / post impressions",
        unit=Unit.RATIO,
    ),
    Kpi("leads", ("leads",), description="leads"),
    Kpi(
        "lead_conversion_rate",
        ("leads",),
        denominator="sessions",
        description="leads / sessions",
        unit=Unit.RATIO,
    ),
)
#: The approximate distinct visitors of a cell (a HyperLogLog count, not a catalog formula).
UNIQUE_VISITORS = "unique_visitors"
#: Every KPI a cell publishes (the catalog's and the visitor estimate) and its unit.
KPI_UNITS: dict[str, Unit] = {kpi.name: kpi.unit for kpi in CATALOG} | {UNIQUE_VISITORS: Unit.COUNT}


@dataclass(frozen=True, slots=True)
class KpiValue:
    kpi: str
    value: float | None
    numerator: int
    denominator: int | None


def evaluate(kpi: Kpi, measures: dict[str, int]) -> KpiValue:
    get = measures.get  # a loop, not sum() over generators: the agent evaluates every KPI update
    numerator = 0
    for measure in kpi.plus:
        numerator += get(measure, 0)
    for measure in kpi.minus:
        numerator -= get(measure, 0)
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
