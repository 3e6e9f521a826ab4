"""A dict as the KPI engine's table, for tests that need no broker."""

from __future__ import annotations

from collections.abc import Iterable

import pytest


class DictStore:
    """``streams.core.engine.CellStore`` over a dict."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return list(self.data.items())


@pytest.fixture
def dict_store() -> DictStore:
    return DictStore()
