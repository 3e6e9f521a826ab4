"""Acknowledgements: what the worker's producer flush waits for before Faust commits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.exceptions import ProducerSendError

from agents.kafka.transport import Acknowledgements


async def test_a_flush_waits_for_earlier_sends_only() -> None:
    loop = asyncio.get_running_loop()
    acknowledgements = Acknowledgements()
    earlier: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(3)]
    for fut in earlier:
        acknowledgements.track(fut)
    waiting = asyncio.ensure_future(acknowledgements.settled(acknowledgements.outstanding(), timeout=5))
    later: asyncio.Future[Any] = loop.create_future()
    acknowledgements.track(later)  # a write of a message after the offsets being committed
    for fut in earlier[:2]:
        fut.set_result(None)
    await asyncio.sleep(0.01)
    assert not waiting.done(), "a send made before the flush is still unacknowledged"
    earlier[2].set_result(None)
    await asyncio.wait_for(waiting, timeout=1)
    assert acknowledgements.outstanding() == {later}


async def test_an_unacknowledged_or_failed_send_fails_the_flush() -> None:
    loop = asyncio.get_running_loop()
    acknowledgements = Acknowledgements()
    stuck: asyncio.Future[Any] = loop.create_future()
    acknowledgements.track(stuck)
    with pytest.raises(ProducerSendError, match="1 buffered writes unacknowledged"):
        await acknowledgements.settled(acknowledgements.outstanding(), timeout=0.05)
    stuck.set_exception(RuntimeError("broker said no"))
    with pytest.raises(ProducerSendError, match="broker said no"):
        await acknowledgements.settled(acknowledgements.outstanding(), timeout=0.05)
