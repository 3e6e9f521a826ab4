"""Dropping client retries: an event_id seen before (within the horizon) is a duplicate.

The first sighting of each event id is remembered in Redis as "partition:offset" of the
raw message. Seeing the same id again at the same coordinates is the same Kafka message
delivered again (after a crash, before its batch was committed), and it counts; at other
coordinates it is a client retry, and it is dropped. One script call classifies a whole
batch, atomically, so several workers can share the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

#: For each key: remember the sighting if the id is new (1), recognise the same message (2),
#: or report a duplicate (0).
_CLASSIFY = """
local horizon = tonumber(ARGV[1])
local verdicts = {}
for i, key in ipairs(KEYS) do
  local sighting = ARGV[i + 1]
  local stored = redis.call('GET', key)
  if not stored then
    redis.call('SET', key, sighting, 'EX', horizon)
    verdicts[i] = 1
  elseif stored == sighting then
    verdicts[i] = 2
  else
    verdicts[i] = 0
  end
end
return verdicts
"""

FIRST_SIGHTING = 1
SAME_MESSAGE_AGAIN = 2
DUPLICATE = 0


@dataclass(frozen=True, slots=True)
class Sighting:
    """One valid event of a batch: its (pseudonymized) id and where the raw message sits."""

    event_key: str
    partition: int
    offset: int


class RedisDeduplicator:
    def __init__(self, client: aioredis.Redis, namespace: str, horizon_seconds: int) -> None:
        self.client = client
        self.namespace = namespace
        self.horizon_seconds = horizon_seconds
        self._script = client.register_script(_CLASSIFY)

    async def counts(self, sightings: list[Sighting]) -> list[bool]:
        """For each sighting, whether it counts (True) or is a client duplicate (False)."""
        if not sightings:
            return []
        keys = [f"{self.namespace}:dedup:{s.event_key}" for s in sightings]
        args: list[str | int] = [self.horizon_seconds, *(f"{s.partition}:{s.offset}" for s in sightings)]
        verdicts = await self._script(keys=keys, args=args)
        return [int(v) != DUPLICATE for v in verdicts]
