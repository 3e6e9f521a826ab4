"""The Faust worker mkpi runs: its shutdown after SIGTERM or SIGINT ends within a bound.

A graceful stop flushes ingest (publishing and committing what it has counted) and Faust's
changelog and offsets. If that hangs (a broker that does not answer), the process exits anyway
once ``MKPI_SHUTDOWN_TIMEOUT_SECONDS`` have passed, as if killed: nothing is lost, because
whatever it had not committed is read again by the next owner of its partitions. So an
orchestrator's grace period (60 s in deploy/k8s) is never what ends the worker.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import faust
import mode

log = logging.getLogger(__name__)

#: Exit status of a worker whose graceful shutdown ran out of time (EX_SOFTWARE).
EXIT_SHUTDOWN_TIMEOUT = 70


class BoundedShutdown(mode.Worker):
    """The bound on a graceful stop, for a Faust worker and for a worker of services alone."""

    shutdown_timeout_seconds: float = 45.0
    _deadline: threading.Timer | None = None

    def _on_sigterm(self) -> None:
        self._start_deadline("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._start_deadline("SIGINT")
        super()._on_sigint()

    def _start_deadline(self, signal_name: str) -> None:
        if self._deadline is not None:
            return
        log.info(
            "%s: shutting down gracefully, for at most %.0fs", signal_name, self.shutdown_timeout_seconds
        )
        self._deadline = threading.Timer(self.shutdown_timeout_seconds, self._give_up)
        self._deadline.daemon = True
        self._deadline.start()

    def _give_up(self) -> None:
        log.critical(
            "shutdown did not finish within %.0fs; exiting without it (what was not committed is "
            "read again by the next owner of its partitions)",
            self.shutdown_timeout_seconds,
        )
        os._exit(EXIT_SHUTDOWN_TIMEOUT)


class BoundedShutdownWorker(BoundedShutdown, faust.Worker):
    """A Faust worker (roles ``all`` and ``agent``)."""

    def __init__(self, app: faust.App, *, shutdown_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.shutdown_timeout_seconds = shutdown_timeout_seconds


class BoundedShutdownServices(BoundedShutdown):
    """A worker of plain services (role ``ingest``)."""

    def __init__(self, *services: mode.ServiceT, shutdown_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*services, **kwargs)
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
