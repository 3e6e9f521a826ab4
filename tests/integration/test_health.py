"""A real worker answers its probes: live at once, ready once it owns and has resumed partitions."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from agents.kafka.topics import ensure_topics
from tests.support import WorkerProcess, isolated_settings


def probe(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_worker_is_live_and_then_ready(tmp_path: Path) -> None:
    settings = isolated_settings()
    await ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path)
    worker.start()
    try:
        assert probe(f"{settings.web.url}/livez") == (200, {"status": "ok"})
        deadline = time.monotonic() + 60
        status, body = probe(f"{settings.web.url}/readyz")
        while status != 200 and time.monotonic() < deadline:
            assert status == 503 and body["reasons"], body
            await asyncio.sleep(0.5)
            status, body = probe(f"{settings.web.url}/readyz")
        assert (status, body) == (200, {"status": "ok"}), worker.log_tail()
    finally:
        assert worker.stop() == 0
