"""Drop alerts: rule files, judging a window against its baseline, and incidents."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from streams.core.alerts import (
    DEFAULT_RULES_FILE,
    AlertRule,
    AlertRulesError,
    Cause,
    Observation,
    SeriesState,
    judge,
    judge_next,
    load_rules,
    newest_closed_start,
    observation_of,
    rules_from_mapping,
    windows_between,
)
from streams.core.windows import Windowing, WindowPolicy

SIZES = (60, 3600, 86400)
HOUR = 3600


def rule(**overrides: Any) -> AlertRule:
    raw: dict[str, Any] = {
        "name": "opens",
        "kpi": "email_open_rate",
        "window": "1h",
        "scope": "campaign",
        "baseline": {"kind": "trailing", "count": 3},
        "drop": {"relative": 0.4, "absolute": 0.05},
        "min_volume": 50,
        "for_windows": 1,
        "noise_sigmas": 0,  # the noise test below sets it
    }
    raw.update(overrides)
    return rules_from_mapping({"rules": [raw]}, "test", SIZES)[0]


def opens(unique_opens: int, delivered: int = 200) -> Observation:
    return Observation(unique_opens, delivered)


SERIES = ("email_open_rate", HOUR, "*", "black_friday")


def fresh(first: int = 0, size: int = HOUR) -> SeriesState:
    return SeriesState(judged_through=first - size, partition=0)


def feed(
    alert: AlertRule, state: SeriesState, hours: list[Observation], first: int = 0
) -> list[tuple[int, str]]:
    """Judge consecutive hourly windows; the (window start, status) of every alert event."""
    events = []
    for index, observation in enumerate(hours):
        start = first + index * HOUR
        outcome = judge_next(alert, SERIES, state, start, observation)
        events += [(start, t.status) for t in outcome.transitions]
    return events


def test_the_shipped_rules_load() -> None:
    rules = load_rules(DEFAULT_RULES_FILE, SIZES)
    assert {r.kpi.name for r in rules} >= {"email_open_rate", "organic_traffic", "lead_conversion_rate"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kpi": "open_rate"}, "kpi must be one of"),
        ({"window": "5m"}, "is not computed"),
        ({"window": "an hour"}, "is not a duration"),
        ({"scope": "region"}, "scope must be"),
        ({"baseline": {"kind": "median"}}, "baseline needs kind"),
        ({"baseline": {"kind": "same_window", "period": "1m"}}, "at least the window"),
        ({"drop": {"relative": 1.5}}, "relative must be a number from 0 to 1"),
        ({"drop": {}}, "drop needs"),
        ({"severity": "page"}, "severity must be"),
        ({"min_volume": "lots"}, "min_volume must be a number"),
        ({"threshold": 3}, "unknown settings ['threshold']"),
        ({"name": "Has Spaces"}, "name must be"),
    ],
)
def test_a_bad_rule_says_what_to_fix(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AlertRulesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rule(**change)


def test_rule_names_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(
        "rules:\n"
        "  - {name: a, kpi: leads, window: 1h, baseline: {kind: trailing}, drop: {relative: 0.5}}\n"
        "  - {name: a, kpi: leads, window: 1d, baseline: {kind: trailing}, drop: {relative: 0.5}}\n"
    )
    with pytest.raises(AlertRulesError, match="repeated: \\['a'\\]"):
        load_rules(path, SIZES)


def breached(alert: AlertRule, current: Observation, baseline: list[Observation]) -> bool:
    judgement = judge(alert, current, baseline)
    assert judgement is not None
    return judgement.breached


def test_a_drop_must_pass_both_thresholds() -> None:
    baseline = [opens(60), opens(60)]  # 0.30
    assert not breached(rule(), opens(37), baseline), "0.185 is 38% down: not 40%"
    assert breached(rule(), opens(34), baseline), "0.17 is 43% and 0.13 down"
    assert not breached(rule(drop={"relative": 0.4, "absolute": 0.25}), opens(20), baseline), "0.2 down"
    assert not breached(rule(), opens(90), baseline), "a rise never breaches"


def test_no_judgement_without_baseline_or_volume() -> None:
    assert judge(rule(), opens(1), []) is None
    assert judge(rule(), opens(1), [opens(10, delivered=40)]) is None, "40 delivered < min_volume 50"


def test_a_real_fall_and_broken_tracking_are_told_apart() -> None:
    baseline = [opens(60), opens(60)]
    fell = judge(rule(), opens(20), baseline)
    assert fell is not None and fell.cause is Cause.KPI_FELL
    silent_opens = judge(rule(), opens(0), baseline)
    assert silent_opens is not None and silent_opens.cause is Cause.TRACKING_BROKE
    assert "a source stopped sending" in silent_opens.detail
    silent_delivery = judge(rule(), opens(0, delivered=0), baseline)
    assert silent_delivery is not None and silent_delivery.breached and silent_delivery.value is None
    assert silent_delivery.cause is Cause.TRACKING_BROKE and "emails_delivered fell" in silent_delivery.detail


def test_a_drop_within_poisson_noise_of_a_small_count_is_not_a_breach() -> None:
    """15 leads a day halving to 7 is 2 standard deviations: chance, not an incident; the same
    halving of 150 is 6."""
    leads = rule(kpi="lead_conversion_rate", noise_sigmas=3, drop={"relative": 0.5}, min_volume=100)
    small = [Observation(15, 300, 0)] * 3 + [Observation(7, 300, 0)]
    large = [Observation(150, 3000, 0)] * 3 + [Observation(70, 3000, 0)]
    assert feed(leads, fresh(), small) == []
    assert feed(leads, fresh(), large) == [(3 * HOUR, "firing")]
    assert feed(rule(kpi="lead_conversion_rate", noise_sigmas=0, drop={"relative": 0.5}), fresh(), small) == [
        (3 * HOUR, "firing")
    ], "without the noise check the small drop breaches"


def test_one_firing_per_incident_and_one_resolved() -> None:
    state = fresh()
    steady, dropped = opens(60), opens(20)
    events = feed(rule(), state, [steady] * 4 + [dropped] * 3 + [steady] * 2)
    assert events == [(4 * HOUR, "firing"), (7 * HOUR, "resolved")]


def test_for_windows_needs_that_many_breaches_in_a_row() -> None:
    alert = rule(for_windows=2, baseline={"kind": "trailing", "count": 2})
    state = fresh()
    steady, dropped = opens(60), opens(20)
    # One breach alone, then two in a row (the trailing baseline still holds a steady hour).
    events = feed(alert, state, [steady, steady, dropped, steady, steady, dropped, dropped, steady, steady])
    assert events == [(6 * HOUR, "firing"), (7 * HOUR, "resolved")]


def test_windows_are_judged_once_in_order_and_revisions_only_feed_baselines() -> None:
    alert = rule()
    state = fresh()
    feed(alert, state, [opens(60)] * 4)
    with pytest.raises(ValueError, match="out of order"):
        judge_next(alert, SERIES, state, 2 * HOUR, opens(1))
    state.revise(3 * HOUR, opens(1))
    assert state.observations[3 * HOUR] == opens(1) and state.incident is None
    # The revised hour now drags the trailing baseline down: 20 opens no longer breach it.
    outcome = judge_next(alert, SERIES, state, 4 * HOUR, opens(35))
    assert outcome.judged is not None and not outcome.judged.breached


def test_a_silent_window_counts_as_zero_and_breaks_tracking() -> None:
    alert = rule()
    state = fresh()
    feed(alert, state, [opens(60)] * 3)
    outcome = judge_next(alert, SERIES, state, 3 * HOUR, observation_of(alert, None))
    assert [t.status for t in outcome.transitions] == ["firing"]
    assert outcome.transitions[0].incident.cause is Cause.TRACKING_BROKE
    assert not state.is_idle()


def test_a_series_without_volume_in_its_history_is_idle() -> None:
    alert = rule()
    state = fresh()
    feed(alert, state, [opens(60)] + [observation_of(alert, None)] * 3)
    assert not state.is_idle()  # its one busy hour was followed by a breach: incident open
    quiet = fresh()
    feed(alert, quiet, [opens(0, delivered=0)] * 6)
    assert quiet.is_idle()


def test_closed_windows_follow_the_watermark_and_the_time_zone() -> None:
    windowing = Windowing((60, 3600, 86400), ZoneInfo("Europe/Berlin"))
    # Low watermark 10:00:30 with 60 s grace: the minute 09:58 is the newest closed one.
    low = 10 * HOUR + 30
    policy = WindowPolicy(windowing, grace_seconds=60, retention_seconds=3600)
    assert newest_closed_start(policy, 60, low) == 10 * HOUR - 120
    assert newest_closed_start(policy, HOUR, low) == 8 * HOUR
    assert windows_between(windowing, HOUR, 5 * HOUR, 8 * HOUR) == [6 * HOUR, 7 * HOUR, 8 * HOUR]
    # Berlin switched to summer time on 2026-03-29: that day lasts 23 hours.
    march_28 = int(datetime(2026, 3, 28, tzinfo=ZoneInfo("Europe/Berlin")).timestamp())
    days = windows_between(windowing, 86400, march_28, march_28 + 3 * 86400)
    assert [d - march_28 for d in days] == [86400, 2 * 86400 - HOUR, 3 * 86400 - HOUR]


def test_an_observation_is_the_kpis_numerator_and_denominator() -> None:
    alert = rule()
    measures = {"email_unique_opens": 30, "emails_delivered": 100, "email_opens": 45}
    assert observation_of(alert, measures) == Observation(30, 100)
    assert observation_of(rule(kpi="leads"), None) == Observation(0, None)


def test_same_window_baseline_reads_the_days_before_and_tolerates_dst() -> None:
    alert = rule(baseline={"kind": "same_window", "period": "1d", "count": 2}, window="1d")
    state = fresh()
    day = 86400
    series = ("email_open_rate", day, "*", "black_friday")
    judge_next(alert, series, state, 0, opens(60))
    judge_next(alert, series, state, day - HOUR, opens(60))  # a 23-hour day before
    outcome = judge_next(alert, series, state, 2 * day - HOUR, opens(20))
    assert outcome.judged is not None and outcome.judged.baseline == pytest.approx(0.3)
    assert [t.status for t in outcome.transitions] == ["firing"]


def test_history_is_bounded_by_what_rules_look_back_on() -> None:
    alert = rule()
    state = fresh()
    feed(alert, state, [opens(60)] * 100)
    assert len(state.observations) <= 3 + 1 + 2
