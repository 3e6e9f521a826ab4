"""Integration tests run against the real Apache Kafka broker and Redis (``tests.plugins.stack``)."""

from __future__ import annotations

import pytest

from agents.settings import Settings


@pytest.fixture(scope="session", autouse=True)
def _real_stack(local_stack: Settings) -> Settings:
    return local_stack
