"""Sessions in Redis: one key per client session or subject, updated compare-and-set.

A batch costs two round trips: one MGET of the states its events touch, then one script call
that stores each new state only where the stored one is still the state read. A key another
worker changed in between (possible only when a subject's events are spread over raw
partitions) is read and placed again, with its events only; other keys keep their answers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from streams.core.sessions import (
    Placement,
    SessionEvent,
    SessionState,
    decode_state,
    encode_state,
    place_all,
)

#: ARGV: ttl, then (key index, old value or "", new value) per key in KEYS; returns the
#: 1-based indexes of the keys whose stored value was not the old one (nothing written there).
_COMPARE_AND_SET = r"""
local ttl = tonumber(ARGV[1])
local conflicts = {}
for i, key in ipairs(KEYS) do
  local old, new = ARGV[2 * i], ARGV[2 * i + 1]
  local stored = redis.call('GET', key)
  if (stored or '') == old then
    redis.call('SET', key, new, 'EX', ttl)
  else
    conflicts[#conflicts + 1] = i
  end
end
return conflicts
"""

#: Rounds of re-reading conflicting keys before the batch fails (and is retried whole).
MAX_ROUNDS = 20


class SessionsContended(RedisError):
    """Keys kept changing under this worker; the caller waits and retries the batch."""


class RedisSessionStore:
    def __init__(self, client: aioredis.Redis, prefix: str, timeout_seconds: int, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds
        self.ttl_seconds = ttl_seconds
        self._script = client.register_script(_COMPARE_AND_SET)

    def _name(self, key: str) -> str:
        return f"{self.prefix}:session:{key}"

    async def place(self, events: Sequence[SessionEvent]) -> list[Placement]:
        by_key: defaultdict[str, list[int]] = defaultdict(list)
        for index, event in enumerate(events):
            by_key[event.key].append(index)
        answers: list[Placement | None] = [None] * len(events)
        pending = list(by_key)
        for _ in range(MAX_ROUNDS):
            if not pending:
                break
            stored = await self.client.mget([self._name(k) for k in pending])
            read = {key: _as_bytes(raw) for key, raw in zip(pending, stored, strict=True)}
            states: dict[str, SessionState] = {key: decode_state(raw) for key, raw in read.items()}
            placed = {}
            for key in pending:
                indexes = by_key[key]
                placed[key] = place_all([events[i] for i in indexes], states, self.timeout_seconds)
            args: list[bytes | int] = [self.ttl_seconds]
            for key in pending:
                args += [read[key], encode_state(states[key])]
            conflicts = await self._script(keys=[self._name(k) for k in pending], args=args)
            lost = {pending[int(i) - 1] for i in conflicts}
            for key in pending:
                if key not in lost:
                    for index, placement in zip(by_key[key], placed[key], strict=True):
                        answers[index] = placement
            pending = [key for key in pending if key in lost]
        if pending:
            raise SessionsContended(f"the sessions of {len(pending)} subjects kept changing under ingest")
        return [answer for answer in answers if answer is not None]


def _as_bytes(raw: bytes | str | None) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw or b""
