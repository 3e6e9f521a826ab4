"""The worker processes of a local run (`mkpi run`): by default a KPI agent and ingest
processes beside it, each a `mkpi worker` of its own role, so each gets a core.

Measured on two cores (docs/benchmarks): one `all` process is one core for ingest and the
agent together; an `agent` and an `ingest` process keep both cores busy and count 1.8 times
as many events per second. The agent needs a core of its own, so the default is one ingest
process per core but one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents.settings import STACK_ENV_PREFIX, Settings
from devtools.stack.process import free_port, wait_for_http


def start_worker(
    settings: Settings, log_path: Path, tree: Path | None = None, unknown: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """``mkpi worker`` with ``settings``, its output appended to ``log_path``; from the checkout
    at ``tree`` (another commit's, for the benchmark's baseline) without the ``unknown``
    variables that commit's settings would refuse. The local stack's variables are not a
    worker's, and older commits refuse them."""
    env = {
        name: value
        for name, value in {**os.environ, **settings.as_environment()}.items()
        if name not in unknown and not name.startswith(STACK_ENV_PREFIX)
    }
    # A checkout from before the command had a package of its own starts it as agents.cli.
    command = "mkpi" if tree is None or (tree / "mkpi").is_dir() else "agents.cli"
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", command, "worker"], cwd=tree, env=env, stdout=log, stderr=log
        )


def default_ingest_processes() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


def process_settings(settings: Settings, ingest_processes: int) -> list[Settings]:
    """The settings of each process: with no ingest process of its own, one worker of role
    ``all``; else the agent on the configured web port (the board, the API and the KPI
    gauges are there), and ``ingest_processes`` ingest workers, each with a name and a port
    of its own."""
    if ingest_processes == 0:
        return [settings]
    name = settings.worker.resolved_worker_name
    agent = settings.replace(worker_role="agent", worker_name=f"{name}-agent")
    ingest = [
        settings.replace(worker_role="ingest", worker_name=f"{name}-ingest{index}", web_port=free_port())
        for index in range(ingest_processes)
    ]
    return [agent, *ingest]


@dataclass
class LocalWorker:
    settings: Settings
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def label(self) -> str:
        return self.settings.worker.worker_name or self.settings.worker.worker_role


class LocalWorkers:
    """Starts the processes, waits until each answers /healthz, and stops them all."""

    def __init__(self, settings: Settings, ingest_processes: int, log_dir: Path) -> None:
        self.settings = settings
        self.ingest_processes = ingest_processes
        self.log_dir = log_dir
        self.workers: list[LocalWorker] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for own in process_settings(self.settings, self.ingest_processes):
            suffix = "" if own.worker.worker_role == "all" else f"-{own.worker.worker_name}"
            log_path = self.log_dir / f"worker-{own.topics.app_id}{suffix}.log"
            self.workers.append(LocalWorker(own, log_path, start_worker(own, log_path)))

    def unhealthy(self, timeout: float) -> LocalWorker | None:
        """The first worker that did not answer /healthz within ``timeout`` seconds, if any."""
        for worker in self.workers:
            if not wait_for_http(f"{worker.settings.web.url}/healthz", worker.process, timeout=timeout):
                return worker
        return None

    def wait_ready(
        self, timeout: float, say: Callable[[str], None], every: float = 5.0
    ) -> LocalWorker | None:
        """Wait until every worker answers /readyz, saying what each still waits for (a
        restore's records left) when that changes, or every ``every`` seconds; the first worker
        not ready within ``timeout`` seconds, if any."""
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            said, said_at = "", 0.0
            while (reasons := not_ready_because(f"{worker.settings.web.url}/readyz")) is not None:
                if time.monotonic() > deadline or worker.process.poll() is not None:
                    return worker
                if reasons != said or time.monotonic() - said_at > every:
                    say(f"{worker.label} is not ready yet: {reasons}")
                    said, said_at = reasons, time.monotonic()
                time.sleep(0.5)
        return None

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM to every worker at once (each flushes and commits), SIGKILL to any still
        running ``grace_seconds`` later."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        deadline = time.monotonic() + grace_seconds
        for worker in self.workers:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


def not_ready_because(url: str) -> str | None:
    """None when ``url`` (a worker's /readyz) answers ready; else its reasons, as one line."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        try:
            reasons = json.loads(error.read()).get("reasons", [])
        except ValueError:
            reasons = []
        return "; ".join(reasons) or f"HTTP {error.code}"
    except OSError as error:
        return f"not answering ({error})"
