"""The published JSON Schemas and the typed models accept and refuse the same things."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import msgspec
import pytest

from devtools.schema_export import stale_files
from streams.contracts.deltas import ALL, CellKey, WatermarkMark
from streams.contracts.events import EVENT_TYPES, TYPE_NAMES
from streams.contracts.outputs import BadReason
from streams.core.aggregation import DeltaAggregator, delta_batches
from streams.core.attribution import Attribution
from streams.core.cells import CellState, kpi_updates
from streams.core.closing import close_cell
from streams.core.validation import Rejection, decode_event, make_bad_row
from streams.core.windows import Windowing

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


def validator(path: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / path).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


def example(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / "examples" / f"{name}.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_every_event_type_has_an_example_that_schema_and_model_accept(name: str) -> None:
    validator("events/raw_event-1-0-0.json").validate(example(name))
    decoded = decode_event(json.dumps(example(name)).encode(), 1_000_000)
    assert TYPE_NAMES.get(type(decoded)) == name  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("schema", "name"),
    [
        ("outputs/kpi_update-1-1-0.json", "kpi_update"),
        ("outputs/bad_row-1-0-0.json", "bad_row"),
        ("internal/kpi_delta-2-1-0.json", "kpi_delta"),
        ("outputs/late_event-1-0-0.json", "late_event"),
        ("outputs/alert-1-0-0.json", "alert"),
    ],
)
def test_output_examples_match_their_schema(schema: str, name: str) -> None:
    validator(schema).validate(example(name))


def test_committed_schemas_are_generated_from_the_current_models() -> None:
    assert stale_files(SCHEMAS) == [], "run `mkpi schemas` and commit the result"


def mutations(event: dict[str, Any]) -> list[tuple[str, Any]]:
    """Variants of a valid event, some valid, some not."""
    out: list[tuple[str, Any]] = [("as is", event)]

    def variant(label: str, path: list[str], value: Any) -> None:
        changed = copy.deepcopy(event)
        target = changed
        for part in path[:-1]:
            target = target.setdefault(part, {})
        if value is _DELETE:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
        out.append((label, changed))

    for field in list(event):
        variant(f"without {field}", [field], _DELETE)
    for field in ("event_id", "session_id", "anonymous_id", "user_id"):
        for value in ("", "x" * 128, "x" * 129, 5, None, ["a"]):
            variant(f"{field}={value!r:.20}", [field], value)
    for field in ("occurred_at", "sent_at"):
        for value in (
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:00:00.123456+03:30",
            "2026-11-27T10:00:00-05:00",
            "2026-11-27T10:00:00",
            "2026-11-27",
            "yesterday",
            "2026-13-40T10:00:00Z",
            1795761000,
        ):
            variant(f"{field}={value!r}", [field], value)
    for value in ("1-0-0", "1-2-3", "10-0-0", "1-0", "v1", 1):
        variant(f"schema_version={value!r}", ["schema_version"], value)
    for field in ("source", "medium", "campaign"):
        for value in ("google", "x" * 256, "x" * 257, 3, None):
            variant(f"utm.{field}={value!r:.20}", ["utm", field], value)
    for value in ("/", "", "x" * 4097, 7, None):
        variant(f"page.path={value!r:.20}", ["page", "path"], value)
    variant("utm not an object", ["utm"], "google")
    variant("extra field", ["colour"], "blue")
    for kind in ("page_vue", "", None, 3):
        variant(f"type={kind!r}", ["type"], kind)
    for nested in ("email", "social", "ad", "lead", "page"):
        if nested in event:
            for field in list(event[nested]):
                variant(f"without {nested}.{field}", [nested, field], _DELETE)
                variant(f"{nested}.{field}=[]", [nested, field], [])
            variant(f"{nested}=null", [nested], None)
    variant("ad.placement=tv", ["ad", "placement"], "tv")
    variant("lead.value=-1", ["lead", "value"], -1)
    variant("lead.currency=eur", ["lead", "currency"], "eur")
    variant("engaged_ms=-5", ["engaged_ms"], -5)
    variant("machine_open='yes'", ["machine_open"], "yes")
    return out


_DELETE = object()
_REFUSED_BY_SCHEMA = {BadReason.NOT_JSON, BadReason.SCHEMA_VIOLATION, BadReason.UNKNOWN_TYPE}


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_model_and_schema_agree_on_a_corpus(name: str) -> None:
    check = validator("events/raw_event-1-0-0.json")
    disagreements = []
    for label, event in mutations(example(name)):
        schema_ok = check.is_valid(event)
        result = decode_event(json.dumps(event).encode(), 1_000_000)
        model_ok = not (isinstance(result, Rejection) and result.reason in _REFUSED_BY_SCHEMA)
        if schema_ok != model_ok:
            disagreements.append(f"{label}: schema {'accepts' if schema_ok else 'refuses'}, model {result}")
    assert not disagreements, "\n".join(disagreements)


def test_outputs_written_by_the_code_match_their_schemas() -> None:
    encoder = msgspec.json.Encoder()
    state = CellState(
        measures={"email_unique_opens": 3, "emails_delivered": 9, "leads": 1}, applied_offset=9, partition=0
    )
    updates = kpi_updates(
        CellKey(60, 1_795_761_900, ALL, "spring_sale"), state, {"email_unique_opens", "leads"}, 1_795_761_960
    )
    update_check = validator("outputs/kpi_update-1-1-0.json")
    final = kpi_updates(
        CellKey(60, 1_795_761_900, ALL, "spring_sale"),
        close_cell(state, closed_by=4),
        state.measures,
        1_795_761_960,
    )
    assert final and all(u.final and u.revision == 0 for _, u in final)
    for _, update in updates + final:
        update_check.validate(json.loads(encoder.encode(update)))
    assert any(update.denominator is None for _, update in updates) and any(
        update.denominator for _, update in updates
    )
    aggregator = DeltaAggregator(Windowing((60, 86400), ZoneInfo("Asia/Tehran")))
    aggregator.add(1_795_761_930.0, Attribution("organic_search", "spring_sale", "r"), [("page_views", 1)])
    delta_check = validator("internal/kpi_delta-2-1-0.json")
    marks = [
        WatermarkMark(schema_version="1-0-0", raw_partition=0, raw_partitions=1, watermark=None, idle=True)
    ]
    batches = delta_batches(aggregator.drain(), marks, 3)
    assert {partition for partition, _ in batches} == {0, 1, 2}, "every partition gets the marks"
    for _, batch in batches:
        delta_check.validate(json.loads(encoder.encode(batch)))
    bad_check = validator("outputs/bad_row-1-0-0.json")
    for reason in BadReason:
        for payload in (b"{", b"\xff"):
            row = make_bad_row(Rejection(reason, "why", "$.x"), payload, "raw", 0, 1, "test")
            bad_check.validate(json.loads(encoder.encode(row)))
