"""Pseudonyms: keyed, stable, and kept as they are when met again."""

from __future__ import annotations

import hashlib
import hmac

from streams.core.privacy import Pseudonymizer


def test_a_pseudonym_is_the_keyed_hmac_and_a_pseudonym_is_its_own() -> None:
    pseudonymize = Pseudonymizer("k" * 32)
    expected = "p1_" + hmac.new(b"k" * 32, b"reader@example.com", hashlib.sha256).hexdigest()[:32]
    assert pseudonymize("reader@example.com") == expected
    assert pseudonymize("reader@example.com") == expected, "the cache answers the same"
    assert pseudonymize(expected) == expected, "a replayed bad row's pseudonym keeps its subject"
    assert pseudonymize("p1_not-a-pseudonym") != "p1_not-a-pseudonym"
    assert Pseudonymizer("other" * 8)("reader@example.com") != expected
    assert pseudonymize.digest("e-1") == pseudonymize.digest("e-1") != Pseudonymizer("o" * 32).digest("e-1")
