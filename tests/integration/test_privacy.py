"""Planted identifiers never leave ingest in clear: not on any topic, in Redis, in logs or on /metrics."""

from __future__ import annotations

import json
import urllib.error
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from aiokafka.admin import AIOKafkaAdminClient

from agents.kafka.connections import kafka_options
from streams.core.privacy import Pseudonymizer
from tests.support import (
    TEST_KEY,
    WorkerProcess,
    isolated_settings,
    produce,
    read_everything,
    wait_for_accounting,
)

pytestmark = pytest.mark.kafka


async def test_planted_identifiers_appear_nowhere(tmp_path: Path) -> None:
    settings = isolated_settings()
    tag = uuid.uuid4().hex[:8]
    user, anon, session = f"planted-user-{tag}", f"planted-anon-{tag}", f"planted-session-{tag}"
    reader, buyer = f"planted.reader.{tag}@example.org", f"planted.buyer.{tag}@example.org"
    secrets = [user, anon, session, reader, buyer]
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    base = {
        "schema_version": "1-0-0",
        "occurred_at": at,
        "user_id": user,
        "anonymous_id": anon,
        "session_id": session,
    }
    valid = [
        {
            **base,
            "type": "page_view",
            "event_id": f"{tag}-1",
            "page": {"path": "/", "referrer": "https://www.google.com/"},
        },
        {
            **base,
            "type": "email_open",
            "event_id": f"{tag}-2",
            "email": {"message_id": "m1", "recipient": reader},
        },
        {**base, "type": "lead", "event_id": f"{tag}-3", "lead": {"form_id": "f", "email": buyer}},
        {
            **base,
            "type": "lead",
            "event_id": reader,
            "lead": {"form_id": "f", "email": buyer},
        },  # an email as event id
    ]
    payloads: list[bytes | None] = [json.dumps(event).encode() for event in valid]
    payloads.append(json.dumps(valid[0]).encode())  # a client retry
    broken = [
        json.dumps({**valid[1], "type": "purchase"}).encode(),  # unknown type, ids inside
        json.dumps(valid[2]).encode()[:-40],  # truncated JSON, ids inside
        # Not JSON at all: addresses are found anywhere, other ids only as JSON fields (docs/contracts.md says so).
        f'contact {reader} or {buyer}, "user_id": "{user}"'.encode(),
        json.dumps(
            {**valid[0], "page": {"path": "/", "title": "x" * 70_000}, "note": reader}
        ).encode(),  # too large
        json.dumps({**valid[0], "occurred_at": "2020-01-01T00:00:00Z"}).encode(),  # out of range
    ]
    payloads += broken

    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        await produce(settings, settings.topics.raw_topic, payloads)
        totals = await wait_for_accounting(settings, len(payloads), timeout=90)
        assert totals["outcomes"] == {"valid": 4, "duplicate": 1, "bad": 5}, worker.log_tail()

        admin = AIOKafkaAdminClient(**kafka_options(settings))
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(settings.topics.topic_prefix)]
        finally:
            await admin.close()
        assert settings.topics.bad_rows_topic in ours and any("changelog" in t for t in ours)
        # every key the worker writes in Redis starts with its prefix (dedup, uniques, view)
        outputs = await read_everything(settings, [t for t in ours if t != settings.topics.raw_topic])
        assert outputs, "nothing was read back"
        haystacks: dict[str, bytes] = {
            f"{r.topic}@{r.partition}:{r.offset}": (r.key or b"") + b"|" + (r.value or b"") for r in outputs
        }
        client = redis.Redis.from_url(settings.redis.redis_url)
        for key in client.scan_iter(
            match=f"{settings.topics.topic_prefix}:*", count=1000
        ):  # this worker's keys
            kind = client.type(key)
            value = client.get(key) if kind == b"string" else repr(client.dump(key)).encode()
            haystacks[f"redis {key!r}"] = key + b"|" + (value or b"")
        client.close()
        assert any(where.startswith("redis") for where in haystacks), "the worker wrote nothing to Redis?"
        haystacks["/metrics"] = worker.metrics_text().encode()
        # Faust's table-browsing routes are not served: the table holds the KPI state.
        for path in ("/table/kpi-values", "/router", "/table"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                worker.get_json(path)
            assert refused.value.code == 404, path
    finally:
        worker.stop()
    haystacks["worker log"] = worker.log_path.read_bytes()

    leaks = [
        (where, secret)
        for where, text in haystacks.items()
        for secret in secrets
        if secret.encode() in text.lower()
    ]
    assert leaks == []
    # The search looked where the identifiers would have been: their pseudonyms are there.
    pseudonym = Pseudonymizer(TEST_KEY)
    bad_rows = b"".join(v for k, v in haystacks.items() if k.startswith(settings.topics.bad_rows_topic))
    assert pseudonym(user).encode() in bad_rows and pseudonym(reader).encode() in bad_rows
