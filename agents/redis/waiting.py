"""Waiting out a Redis outage: the caller pauses (logged, ``mkpi_redis_up`` 0), then goes on.

Ingest cannot add page views' visitors to their sketches without Redis, and the agent would
leave the view and unique visitor counts behind, so neither guesses: both hold what they are
doing and retry, with a growing delay, until Redis answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 5.0


async def until_redis_answers(
    call: Callable[[], Awaitable[T]], purpose: str, redis_up: Gauge, failures: Counter | None = None
) -> T:
    delay = FIRST_RETRY_SECONDS
    while True:
        try:
            answer = await call()
        except (RedisError, OSError) as exc:
            redis_up.set(0)
            if failures is not None:
                failures.inc()
            log.warning("Redis unavailable for %s (%s); paused, retrying in %.1fs", purpose, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LONGEST_RETRY_SECONDS)
            continue
        redis_up.set(1)
        return answer
