"""Fixtures of the real stack: the Apache Kafka broker and Redis that the project starts.

``mkpi stack up`` is idempotent, so a test session reuses a healthy broker (CI starts it in
scripts/test.sh) or starts one. There is no fallback: without a broker these tests fail.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.settings import Settings
from devtools.stack.cleanup import remove_run_data
from devtools.stack.kafka import KafkaBroker
from devtools.stack.redis import LocalRedis
from tests.support import ISSUED_PREFIXES, TEST_DATA, base_settings


@pytest.fixture(scope="session")
def local_stack() -> Iterator[Settings]:
    """The machine's settings with the broker and Redis up; the test topics and keys handed
    out in the session are removed at its end."""
    settings = base_settings()
    KafkaBroker.from_settings(settings).start()
    LocalRedis.from_settings(settings).start()
    yield settings
    topics, keys = asyncio.run(remove_run_data(settings, ISSUED_PREFIXES))
    for prefix in ISSUED_PREFIXES:
        shutil.rmtree(TEST_DATA / prefix, ignore_errors=True)
    logging.getLogger(__name__).info("removed %d test topics and %d Redis keys", topics, keys)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path
