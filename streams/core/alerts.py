"""In-stream drop alerts: rules, baselines and incidents, judged on every closed window.

A rule watches one KPI in one window size at one scope (overall, per channel, per campaign).
Each closed window of a watched series is compared with a baseline made of earlier windows of
the same series: the same window one or more days or weeks before, or the windows just before
it. A window breaches when the KPI fell by both the relative and the absolute threshold while the
baseline had enough volume; ``for_windows`` breaches in a row open an incident (one ``firing``
event), and the first window that does not breach closes it (one ``resolved`` event).

A breach is put down to broken tracking rather than a real fall when the KPI's input volume
collapsed (a source stopped sending: the count behind the numerator or the denominator fell
below ``tracking_floor`` of what the baseline predicts). ``judge`` also blames tracking when an
observation counts bad rows of the KPI's source types, but the engine does not count them yet
(a bad row often has no usable type or time): rejected events show up as the collapse.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import yaml

from streams.contracts.deltas import ALL
from streams.contracts.outputs import AlertEvent
from streams.contracts.versions import ALERT_VERSION
from streams.core.catalog import CATALOG, Kpi, evaluate
from streams.core.windows import Windowing, WindowPolicy

#: The file the worker loads unless ``MKPI_ALERT_RULES_FILE`` names another one.
DEFAULT_RULES_FILE = Path(__file__).with_name("alert_rules.yml")

_KPIS = {kpi.name: kpi for kpi in CATALOG}
_DURATION = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SEVERITIES = ("info", "warning", "critical")
DEFAULT_NOISE_SIGMAS = 3.0


class AlertRulesError(ValueError):
    """The rules file is not usable; the message says which rule and what to fix."""


class Scope(enum.Enum):
    OVERALL = "overall"
    CHANNEL = "channel"
    CAMPAIGN = "campaign"

    def covers(self, channel: str, campaign: str) -> bool:
        if self is Scope.OVERALL:
            return channel == ALL and campaign == ALL
        if self is Scope.CHANNEL:
            return channel != ALL and campaign == ALL
        return channel == ALL and campaign != ALL


class Cause(enum.Enum):
    KPI_FELL = "kpi_fell"
    TRACKING_BROKE = "tracking_broke"


@dataclass(frozen=True, slots=True)
class Baseline:
    """``same_window``: the window ``period_seconds`` earlier, ``count`` times back;
    ``trailing``: the ``count`` windows right before."""

    kind: str
    count: int
    period_seconds: int = 0

    def step(self, window_seconds: int) -> int:
        return self.period_seconds if self.kind == "same_window" else window_seconds

    def starts(self, start: int, window_seconds: int) -> list[int]:
        step = self.step(window_seconds)
        return [start - step * back for back in range(1, self.count + 1)]


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    kpi: Kpi
    window_seconds: int
    scope: Scope
    baseline: Baseline
    relative_drop: float
    absolute_drop: float
    min_volume: int
    for_windows: int
    severity: str
    tracking_floor: float
    #: A breach must also fall this many standard deviations of Poisson noise below the count
    #: the baseline expects (its numerator, scaled to the window's volume for a ratio): a 50%
    #: drop of a rate behind 15 leads a day happens by chance every few weeks per channel.
    noise_sigmas: float

    @property
    def history_seconds(self) -> int:
        """How far back this rule looks, from the start of the window it judges."""
        return (
            self.baseline.step(self.window_seconds) * self.baseline.count
            + self.window_seconds * self.for_windows
        )


def _duration(value: Any, where: str) -> int:
    if isinstance(value, int) and value > 0:
        return value
    match = _DURATION.match(str(value))
    if match is None:
        raise AlertRulesError(f"{where}: {value!r} is not a duration like 60, 1m, 1h, 1d or 1w")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _number(raw: dict[str, Any], name: str, where: str, low: float, high: float, default: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise AlertRulesError(f"{where}: {name} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _rule(raw: Any, where: str, window_sizes: tuple[int, ...]) -> AlertRule:
    if not isinstance(raw, dict):
        raise AlertRulesError(f"{where}: a rule is a mapping of settings")
    known = {
        "name", "kpi", "window", "scope", "baseline", "drop", "min_volume", "for_windows",
        "severity", "tracking_floor", "noise_sigmas",
    }  # fmt: skip
    if unknown := set(raw) - known:
        raise AlertRulesError(f"{where}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
    name = str(raw.get("name", ""))
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise AlertRulesError(f"{where}: name must be lower-case letters, digits, '-', '_' or '.'")
    where = f"{where} ({name})"
    kpi = _KPIS.get(str(raw.get("kpi")))
    if kpi is None:
        raise AlertRulesError(f"{where}: kpi must be one of {sorted(_KPIS)}, got {raw.get('kpi')!r}")
    window_seconds = _duration(raw.get("window"), f"{where}: window")
    if window_seconds not in window_sizes:
        raise AlertRulesError(
            f"{where}: window {window_seconds}s is not computed; MKPI_WINDOW_SIZES has {list(window_sizes)}"
        )
    try:
        scope = Scope(raw.get("scope", "overall"))
    except ValueError:
        raise AlertRulesError(f"{where}: scope must be overall, channel or campaign") from None
    raw_baseline = raw.get("baseline")
    if not isinstance(raw_baseline, dict) or raw_baseline.get("kind") not in ("same_window", "trailing"):
        raise AlertRulesError(f"{where}: baseline needs kind: same_window (with period) or trailing")
    count = int(_number(raw_baseline, "count", f"{where}: baseline", 1, 52, 1))
    if raw_baseline["kind"] == "same_window":
        period = _duration(raw_baseline.get("period", "1d"), f"{where}: baseline period")
        if period < window_seconds:
            raise AlertRulesError(f"{where}: baseline period must be at least the window")
        baseline = Baseline("same_window", count, period)
    else:
        baseline = Baseline("trailing", count)
    drop = raw.get("drop")
    if not isinstance(drop, dict) or not set(drop) <= {"relative", "absolute"} or not drop:
        raise AlertRulesError(f"{where}: drop needs relative (0-1) and/or absolute (KPI units)")
    severity = str(raw.get("severity", "warning"))
    if severity not in SEVERITIES:
        raise AlertRulesError(f"{where}: severity must be one of {list(SEVERITIES)}")
    return AlertRule(
        name=name,
        kpi=kpi,
        window_seconds=window_seconds,
        scope=scope,
        baseline=baseline,
        relative_drop=_number(drop, "relative", f"{where}: drop", 0, 1, 0),
        absolute_drop=_number(drop, "absolute", f"{where}: drop", 0, float("inf"), 0),
        min_volume=int(_number(raw, "min_volume", where, 0, float("inf"), 0)),
        for_windows=int(_number(raw, "for_windows", where, 1, 100, 1)),
        severity=severity,
        tracking_floor=_number(raw, "tracking_floor", where, 0, 1, 0.1),
        noise_sigmas=_number(raw, "noise_sigmas", where, 0, 10, DEFAULT_NOISE_SIGMAS),
    )


def load_rules(path: Path, window_sizes: tuple[int, ...]) -> tuple[AlertRule, ...]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise AlertRulesError(f"{path}: cannot read alert rules: {exc}") from exc
    return rules_from_mapping(data, str(path), window_sizes)


def configured_rules(rules_file: str, window_sizes: tuple[int, ...]) -> tuple[AlertRule, ...]:
    """The rules ``MKPI_ALERT_RULES_FILE`` names: the shipped ones when empty, none for "none"."""
    if rules_file == "none":
        return ()
    return load_rules(Path(rules_file) if rules_file else DEFAULT_RULES_FILE, window_sizes)


def rules_from_mapping(data: Any, origin: str, window_sizes: tuple[int, ...]) -> tuple[AlertRule, ...]:
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise AlertRulesError(f"{origin}: expected a mapping with a list under 'rules'")
    rules = tuple(
        _rule(raw, f"{origin}: rule {index + 1}", window_sizes)
        for index, raw in enumerate(data.get("rules") or [])
    )
    names = [rule.name for rule in rules]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise AlertRulesError(f"{origin}: rule names must be unique; repeated: {duplicated}")
    return rules


class Observation(msgspec.Struct, frozen=True, array_like=True):
    """One closed window of a series: the KPI's numerator and denominator (None for counts)."""

    numerator: int
    denominator: int | None
    #: Always 0: nothing counts bad rows per window. Kept because stored series states (the
    #: KPI table and its changelog) hold observations as arrays of three.
    rejected: int = 0


class Judgement(msgspec.Struct, frozen=True, kw_only=True):
    breached: bool
    value: float | None
    baseline: float
    volume: float
    baseline_volume: float
    cause: Cause | None = None
    detail: str = ""


def _value(kpi: Kpi, numerator: int, denominator: int | None) -> float | None:
    if kpi.denominator is None:
        return numerator * kpi.scale
    return numerator * kpi.scale / denominator if denominator else None


def judge(rule: AlertRule, current: Observation, baseline: list[Observation]) -> Judgement | None:
    """Whether ``current`` breaches the rule against ``baseline`` (earlier windows found), or
    None when there is nothing to judge by (no baseline window, or too little volume)."""
    if not baseline:
        return None
    kpi = rule.kpi
    ratio = kpi.denominator is not None
    numerators = sum(o.numerator for o in baseline) / len(baseline)
    if ratio:
        denominators = sum(o.denominator or 0 for o in baseline) / len(baseline)
        base_value = numerators * kpi.scale / denominators if denominators else None
        base_volume, volume = denominators, float(current.denominator or 0)
    else:
        base_value = numerators * kpi.scale
        base_volume, volume = numerators, float(current.numerator)
    if base_value is None or base_volume < max(rule.min_volume, 1):
        return None
    value = _value(kpi, current.numerator, current.denominator)
    fell = base_value - (value if value is not None else 0.0)
    expected_numerator = numerators * (volume / base_volume) if ratio else numerators
    beyond_noise = expected_numerator - current.numerator >= rule.noise_sigmas * math.sqrt(
        max(expected_numerator, 0.0)
    )
    breached = value is None or (
        fell > 0
        and fell >= rule.relative_drop * abs(base_value)
        and fell >= rule.absolute_drop
        and beyond_noise
    )
    judgement = Judgement(
        breached=breached, value=value, baseline=base_value, volume=volume, baseline_volume=base_volume
    )
    if not breached:
        return judgement
    cause, detail = Cause.KPI_FELL, f"{kpi.name} fell from {base_value:.4g} to {_shown(value)}"
    if volume < rule.tracking_floor * base_volume:
        measure = kpi.denominator if ratio else "+".join(kpi.plus)
        cause = Cause.TRACKING_BROKE
        detail = (
            f"{measure} fell from ~{base_volume:.4g} to {volume:.4g} per window: a source stopped sending"
        )
    elif ratio and current.numerator < rule.tracking_floor * expected_numerator:
        cause = Cause.TRACKING_BROKE
        detail = (
            f"{'+'.join(kpi.plus)} fell to {current.numerator} where ~{expected_numerator:.4g} were "
            "expected: a source stopped sending"
        )
    return msgspec.structs.replace(judgement, cause=cause, detail=detail)


def _shown(value: float | None) -> str:
    return "nothing (no denominator)" if value is None else f"{value:.4g}"


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    incident_id: str
    first_breach_start: int
    cause: Cause
    detail: str


class SeriesState(msgspec.Struct, kw_only=True):
    """What the worker keeps per rule and series: recent closed windows, the judgement of each,
    the open incident, and the newest window judged (windows are judged once, in order)."""

    observations: dict[int, Observation] = msgspec.field(default_factory=dict)
    breaches: dict[int, bool] = msgspec.field(default_factory=dict)
    incident: Incident | None = None
    judged_through: int
    #: The delta partition the series lives on, and the offset of the watermark mark whose
    #: judging produced ``last_events``: a replay of that mark sends them again.
    partition: int
    judged_by: int = -1
    last_events: list[bytes] = msgspec.field(default_factory=list)

    def revise(self, start: int, observation: Observation) -> None:
        """A late correction of a window already judged: it only changes later baselines."""
        if start in self.observations:
            self.observations[start] = observation

    def is_idle(self) -> bool:
        """Nothing in the history its rule reads had volume, and no incident is open: the
        series can be forgotten until its source sends again."""
        return self.incident is None and not any(
            o.numerator or o.denominator for o in self.observations.values()
        )


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert event to publish: the incident opened (``firing``) or closed (``resolved``)."""

    status: str
    incident: Incident
    window_start: int
    judgement: Judgement
    breached_windows: int


@dataclass(slots=True)
class Outcome:
    transitions: list[Transition] = field(default_factory=list)
    judged: Judgement | None = None


Series = tuple[str, int, str, str]


def incident_id(rule: AlertRule, series: Series, first_breach_start: int) -> str:
    text = f"{rule.name}|{'|'.join(map(str, series))}|{first_breach_start}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def judge_next(
    rule: AlertRule, series: Series, state: SeriesState, start: int, observation: Observation
) -> Outcome:
    """Judge the window after ``state.judged_through`` (the caller goes in window order, with
    a zero observation for a window that saw no event) and move the incident along.

    A window without a baseline or with too little volume neither opens nor closes an incident.
    """
    if start <= state.judged_through:
        raise ValueError(f"window {start} judged out of order (judged through {state.judged_through})")
    state.observations[start] = observation
    state.judged_through = start
    outcome = Outcome()
    window = rule.window_seconds
    found = [
        seen
        for earlier in rule.baseline.starts(start, window)
        if (seen := _near(state.observations, earlier, window)) is not None
    ]
    judgement = judge(rule, observation, found)
    outcome.judged = judgement
    if judgement is not None:
        state.breaches[start] = judgement.breached
        if state.incident is None and judgement.breached:
            streak = [start - window * back for back in range(rule.for_windows)]
            if all(state.breaches.get(s) for s in streak):
                first = streak[-1]
                assert judgement.cause is not None  # a breach always has one
                state.incident = Incident(
                    incident_id=incident_id(rule, series, first),
                    first_breach_start=first,
                    cause=judgement.cause,
                    detail=judgement.detail,
                )
                outcome.transitions.append(
                    Transition("firing", state.incident, start, judgement, rule.for_windows)
                )
        elif state.incident is not None and not judgement.breached:
            breached = sum(
                1 for s, b in state.breaches.items() if b and s >= state.incident.first_breach_start
            )
            outcome.transitions.append(Transition("resolved", state.incident, start, judgement, breached))
            state.incident = None
    _forget_old(rule, state)
    return outcome


def observation_of(rule: AlertRule, measures: dict[str, int] | None) -> Observation:
    """A window's observation from its cell's measures (None: the series saw no event)."""
    if measures is None:
        return Observation(0, None if rule.kpi.denominator is None else 0)
    value = evaluate(rule.kpi, measures)
    return Observation(value.numerator, value.denominator)


def newest_closed_start(policy: WindowPolicy, size: int, low_watermark: float) -> int:
    """The start of the newest window of ``size`` that ``low_watermark`` has closed."""
    windowing = policy.windowing
    containing = windowing.start(size, low_watermark - policy.grace_seconds)
    return windowing.start(size, containing - 1)


def windows_between(windowing: Windowing, size: int, after: int, through: int) -> list[int]:
    """Starts of the windows of ``size`` after the one starting at ``after``, up to ``through``."""
    starts = []
    start = windowing.end(size, after)
    while start <= through:
        starts.append(start)
        start = windowing.end(size, start)
    return starts


def _near(observations: dict[int, Observation], target: int, window_seconds: int) -> Observation | None:
    """The window starting at ``target``, or within half a window of it (a day window next to a
    daylight saving change starts an hour off)."""
    if (exact := observations.get(target)) is not None:
        return exact
    for start, observation in observations.items():
        if abs(start - target) < window_seconds / 2:
            return observation
    return None


def _forget_old(rule: AlertRule, state: SeriesState) -> None:
    horizon = state.judged_through - rule.history_seconds
    for start in [s for s in state.observations if s < horizon]:
        del state.observations[start]
    if state.incident is None:
        for start in [s for s in state.breaches if s < horizon]:
            del state.breaches[start]


def _recovery(judgement: Judgement) -> str:
    return f"back to {_shown(judgement.value)} against a baseline of {judgement.baseline:.4g}"


def alert_event(rule: AlertRule, series: Series, transition: Transition, now: datetime) -> AlertEvent:
    kpi, size, channel, campaign = series
    incident, judgement = transition.incident, transition.judgement
    return AlertEvent(
        schema_version=ALERT_VERSION,
        incident_id=incident.incident_id,
        status="firing" if transition.status == "firing" else "resolved",
        rule=rule.name,
        severity=rule.severity,  # type: ignore[arg-type]  # checked when the rules load
        cause=incident.cause.value,
        detail=incident.detail if transition.status == "firing" else _recovery(judgement),
        kpi=kpi,
        window_seconds=size,
        window_start=datetime.fromtimestamp(transition.window_start, UTC),
        first_breach_start=datetime.fromtimestamp(incident.first_breach_start, UTC),
        scope=rule.scope.value,
        channel=channel,
        campaign=campaign,
        value=judgement.value,
        baseline=judgement.baseline,
        breached_windows=max(transition.breached_windows, 1),
        emitted_at=now,
    )
