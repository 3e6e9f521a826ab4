"""First sightings in Redis: client retries to drop, and keys to count once.

Each sighting names a key (an event id, a session, an email opened) and where the raw
message that carries it sits (partition:offset). The first sighting of a key is
remembered for its horizon. Seeing the key again at the same coordinates is the same Kafka
message delivered again (after a crash, before its batch was committed) and it counts
again; at other coordinates it does not count (a client retry, or a session already
counted). One script call classifies a whole batch, atomically, so workers can share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

#: For each key: remember the sighting if new (1), recognise the same message (2), or not (0).
_CLASSIFY = """
local verdicts = {}
for i, key in ipairs(KEYS) do
  local sighting = ARGV[2 * i - 1]
  local stored = redis.call('GET', key)
  if not stored then
    redis.call('SET', key, sighting, 'EX', tonumber(ARGV[2 * i]))
    verdicts[i] = 1
  elseif stored == sighting then
    verdicts[i] = 2
  else
    verdicts[i] = 0
  end
end
return verdicts
"""

NOT_FIRST = 0


@dataclass(frozen=True, slots=True)
class Sighting:
    """A (pseudonymized) key seen in the raw message at ``partition``:``offset``."""

    namespace: str
    key: str
    partition: int
    offset: int
    horizon_seconds: int


class RedisSightings:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_CLASSIFY)

    async def counts(self, sightings: list[Sighting]) -> list[bool]:
        """For each sighting, whether it counts: first sighting, or the same message again."""
        if not sightings:
            return []
        keys = [f"{self.prefix}:{s.namespace}:{s.key}" for s in sightings]
        args: list[str | int] = []
        for s in sightings:
            args += [f"{s.partition}:{s.offset}", s.horizon_seconds]
        verdicts = await self._script(keys=keys, args=args)
        return [int(v) != NOT_FIRST for v in verdicts]
