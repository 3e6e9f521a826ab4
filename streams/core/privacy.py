"""Keyed pseudonymization of personal identifiers, applied before anything is kept.

User ids, anonymous ids, session ids and email addresses are replaced by an HMAC-SHA256
of the value under a secret key: the same person maps to the same pseudonym (so unique
counts still work) and without the key the pseudonym cannot be reversed or recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

log = logging.getLogger(__name__)

#: Used only with MKPI_INSECURE_DEV_MODE=true. Public, hence worthless as a secret.
INSECURE_DEV_KEY = "mkpi-insecure-development-key-do-not-use"
PSEUDONYM_PREFIX = "p1_"

_PSEUDONYM = re.compile(re.escape(PSEUDONYM_PREFIX) + "[0-9a-f]{32}")

#: JSON fields that hold personal identifiers, wherever they appear in a payload.
IDENTIFIER_FIELDS = ("anonymous_id", "user_id", "session_id", "recipient", "email")
_FIELD_VALUE = re.compile(
    rb'("(?:' + b"|".join(f.encode() for f in IDENTIFIER_FIELDS) + rb')"\s*:\s*")((?:[^"\\]|\\.)*)(")'
)
# Bounded repeats keep the scan linear on long inputs (an unbounded local part is quadratic).
_EMAIL_ADDRESS = re.compile(rb"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,24}")


#: Pseudonyms remembered per process: a subject's events come in bursts (a visit, a
#: campaign's emails), and an HMAC costs more than the rest of placing the event.
CACHED_PSEUDONYMS = 65_536


class Pseudonymizer:
    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self._cache: dict[str, str] = {}

    @classmethod
    def from_key(cls, key: str) -> Pseudonymizer:
        """The configured key; empty only in MKPI_INSECURE_DEV_MODE (settings check that)."""
        if key:
            return cls(key)
        log.warning("MKPI_INSECURE_DEV_MODE: identifiers are pseudonymized with a public key")
        return cls(INSECURE_DEV_KEY)

    def __call__(self, value: str) -> str:
        """The value's pseudonym; a value that is a pseudonym already (from a bad row sent again,
        whose payload was pseudonymized when it was kept) is its own, so the subject keeps it."""
        pseudonym = self._cache.get(value)
        if pseudonym is None:
            if len(self._cache) >= CACHED_PSEUDONYMS:
                self._cache.clear()
            if _PSEUDONYM.fullmatch(value):
                return value
            pseudonym = PSEUDONYM_PREFIX + hmac.digest(self._key, value.encode(), "sha256").hex()[:32]
            self._cache[value] = pseudonym
        return pseudonym

    def digest(self, value: str) -> str:
        """A keyed digest (BLAKE2b under the same key) of a value that is only compared, never
        published or counted per person, such as an event id remembered for dedup: a third of
        an HMAC-SHA256's cost, and an event id may carry anything a producer put in it."""
        return hashlib.blake2b(value.encode(), key=self._key[:64], digest_size=16).hexdigest()

    def optional(self, value: str | None) -> str | None:
        return None if value is None else self(value)

    def scrub_payload(self, payload: bytes) -> bytes:
        """Pseudonymize identifiers inside a raw payload that is kept as a bad row.

        Values of identifier fields are replaced wherever the text looks like JSON (even broken
        JSON), and anything shaped like an email address is replaced anywhere.
        """

        def field(match: re.Match[bytes]) -> bytes:
            value = match.group(2).decode("utf-8", errors="replace")
            return match.group(1) + self(value).encode() + match.group(3)

        def address(match: re.Match[bytes]) -> bytes:
            return self(match.group(0).decode("ascii", errors="replace")).encode()

        scrubbed = _FIELD_VALUE.sub(field, payload)
        return _EMAIL_ADDRESS.sub(address, scrubbed) if b"@" in scrubbed else scrubbed
