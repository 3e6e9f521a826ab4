"""Debian's Chromium, headless, driven over the DevTools protocol for browser tests.

The project installs ``chromium`` (scripts/bootstrap.sh). The browser runs with a fresh profile
and without the background services that try to reach the internet; the test talks to its
page through aiohttp's websocket client: navigate, evaluate JavaScript, take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root on CI machines
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


class HeadlessChromium:
    """``async with HeadlessChromium(profile_dir) as browser``: one page to drive."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 900) -> None:
        if shutil.which(CHROMIUM) is None:
            raise RuntimeError(f"{CHROMIUM} is missing: run scripts/bootstrap.sh (it installs chromium)")
        self.profile_dir = profile_dir
        self.size = (width, height)
        self.process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    def _launch(self) -> subprocess.Popen[bytes]:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        width, height = self.size
        with open(self.profile_dir / "chromium.log", "wb") as log:
            return subprocess.Popen(
                [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile_dir}", f"--window-size={width},{height}"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def __aenter__(self) -> HeadlessChromium:
        self.process = self._launch()
        port = await self._devtools_port()
        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self._socket = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._session is not None:
            await self._session.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def _devtools_port(self, timeout: float = 30) -> int:
        """Chromium writes the port it chose to DevToolsActivePort in the profile."""
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.profile_dir / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with {self.process.returncode}:\n{log}")
            if marker.exists() and (first := marker.read_text().split("\n")[0]).isdigit():
                return int(first)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port within {timeout}s")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; events that arrive meanwhile are ignored."""
        assert self._socket is not None
        command_id = next(self._ids)
        await self._socket.send_str(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self._socket.receive_str())
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Evaluate ``expression`` until it is truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except RuntimeError:
                value = None  # the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout}s in the browser: {expression}")
            await asyncio.sleep(0.3)

    async def screenshot(self) -> bytes:
        """The whole page as PNG."""
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(shot["data"])
