"""Who reads which KPIs: the roles of the source document, each with the page that holds
their numbers, and the generalist's overview with all of them.

The live board (``streams.core.board``) and the Grafana dashboards per role
(``devtools.dashboards``) are both built from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.catalog import CATALOG, UNIQUE_VISITORS


@dataclass(frozen=True, slots=True)
class Role:
    """``name`` is the board's ``?view=`` and the dashboard's file name."""

    name: str
    title: str
    reader: str
    kpis: tuple[str, ...]


ROLES: tuple[Role, ...] = (
    Role("seo", "SEO", "the SEO manager", ("organic_traffic", "organic_sessions", "sessions", "page_views")),
    Role(
        "content",
        "Content",
        "the content marketer",
        ("time_on_page_seconds", "blog_traffic", "net_subscribers", UNIQUE_VISITORS),
    ),
    Role(
        "social",
        "Social media",
        "the social media manager",
        ("net_follows", "post_impressions", "shares", "social_click_through_rate"),
    ),
    Role(
        "automation",
        "Marketing automation",
        "the marketing-automation coordinator",
        (
            "email_open_rate",
            "email_click_rate",
            "lead_conversion_rate",
            "ad_click_through_rate",
            "leads",
            "emails_delivered",
        ),
    ),
)
OVERVIEW = Role("overview", "Overview", "the generalist", (*(kpi.name for kpi in CATALOG), UNIQUE_VISITORS))
#: Every view by name, the overview first.
VIEWS: dict[str, Role] = {role.name: role for role in (OVERVIEW, *ROLES)}
