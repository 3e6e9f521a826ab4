"""First sightings in Redis: client retries to drop, and keys to count once.

Each sighting names a key (an event id, a session, an email opened) and where the raw
message that carries it sits (partition:offset). The first sighting of a key is
remembered for its horizon. Seeing the key again at the same coordinates is the same Kafka
message delivered again (after a crash, before its batch was committed) and it counts
again; at other coordinates it does not count (a client retry, or a session already
counted). One script call classifies a whole batch, atomically, so workers can share it.

The batch travels as one argument, a line per sighting, and the verdicts come back as one
string, a digit per sighting: with ten or more sightings per event, packing three arguments
each was a tenth of a worker's CPU. The script names its keys itself (not in KEYS), which a
single Redis server allows; Redis Cluster would not.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from streams.core.ingestor import Sighting

#: For each line "<seconds to remember> <partition:offset> <key>": remember the sighting if
#: new (1), recognise the same message (2), or not (0).
_CLASSIFY = r"""
local verdicts = {}
for ttl, sighting, key in string.gmatch(ARGV[1], "(%d+) (%S+) ([^\n]+)") do
  local stored = redis.call('GET', key)
  if not stored then
    redis.call('SET', key, sighting, 'EX', tonumber(ttl))
    verdicts[#verdicts + 1] = '1'
  elseif stored == sighting then
    verdicts[#verdicts + 1] = '2'
  else
    verdicts[#verdicts + 1] = '0'
  end
end
return table.concat(verdicts)
"""

NOT_FIRST = ord("0")


class RedisSightings:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_CLASSIFY)

    async def counts(self, sightings: list[Sighting]) -> list[bool]:
        """For each sighting, whether it counts: first sighting, or the same message again."""
        if not sightings:
            return []
        prefix = self.prefix
        lines = "\n".join(
            f"{s.horizon_seconds} {s.partition}:{s.offset} {prefix}:{s.namespace}:{s.key}" for s in sightings
        )
        verdicts: bytes = await self._script(keys=[], args=[lines])
        if len(verdicts) != len(sightings):
            raise ValueError(f"{len(verdicts)} verdicts for {len(sightings)} sightings")
        return [verdict != NOT_FIRST for verdict in verdicts]
