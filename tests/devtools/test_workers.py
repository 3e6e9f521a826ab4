"""`mkpi run` waits for its workers' readiness and says what they wait for."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from devtools.stack.workers import not_ready_because

REASONS = ["ingest is restoring its state from the journal (partition 0: 120 records left)"]


class Probe(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok"} if Probe.ready else {"status": "unavailable", "reasons": REASONS})
        self.send_response(200 if Probe.ready else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/readyz"
    server.shutdown()


def test_a_worker_not_ready_is_told_by_its_reasons_and_a_ready_one_by_none(probe_url: str) -> None:
    Probe.ready = False
    assert not_ready_because(probe_url) == REASONS[0]
    Probe.ready = True
    assert not_ready_because(probe_url) is None
    assert not_ready_because("http://127.0.0.1:9/readyz").startswith("not answering")
