"""Restart run: how long a worker takes to be ready again after a stop, a kill -9, and on an
empty data directory, after feeding it for a while.

    python -m bench.restart --minutes 10 --rate 1000 [--baseline COMMIT] [--record]

Feeds one worker (``bench.soak``'s realistic events) for ``--minutes``, waits until it has
accounted for everything, then, timing each until ``/readyz`` answers 200: stops it with SIGTERM
and starts it again on the same data directory; kills it with SIGKILL while it is being fed and
starts it again; starts a worker on an empty data directory (the restore a new host does). For
that last one it reports the state entries restored per second. ``--record`` puts the figures in
docs/benchmarks/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agents.kafka.topics import ensure_topics
from agents.settings import Settings
from bench.peers import baseline_tree, unknown_to
from bench.soak import accounted, commit, feed, record_figures
from bench.workers import REPO, bench_settings, machine, remove_data
from devtools.generator import GroundTruth
from devtools.stack.process import wait_for_http
from devtools.stack.settings import StackSettings
from devtools.stack.workers import start_worker


@dataclass
class Restart:
    """One start of the worker and how long it took to be ready."""

    how: str
    ready_seconds: float
    #: Entries of ingest's state once ready, and journal records read to get there (None: the
    #: worker does not export them).
    state_entries: int | None
    journal_records_read: int | None


def ready_after(settings: Settings, worker: subprocess.Popen[bytes], started: float, timeout: float) -> float:
    """Seconds from ``started`` until the worker's /readyz answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}")
        try:
            with urllib.request.urlopen(f"{settings.web.url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the worker was not ready within {timeout:.0f} s")


def metric_sum(settings: Settings, name: str) -> int | None:
    with urllib.request.urlopen(f"{settings.web.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return int(sum(values)) if values else None


class Runs:
    def __init__(self, settings: Settings, tree: Path, log_dir: Path) -> None:
        self.settings = settings
        self.tree = tree
        self.log_dir = log_dir
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self, how: str, settings: Settings | None = None) -> Restart:
        own = settings or self.settings
        log_path = self.log_dir / f"{own.topics.topic_prefix}-{how.replace(' ', '-')}.log"
        started = time.monotonic()
        self.worker = start_worker(own, log_path, self.tree, unknown_to(self.tree, own))
        if not wait_for_http(f"{own.web.url}/healthz", self.worker, timeout=300):
            raise SystemExit(f"the worker did not start; see {log_path}")
        seconds = ready_after(own, self.worker, started, timeout=1800)
        restart = Restart(
            how,
            round(seconds, 1),
            metric_sum(own, "mkpi_ingest_state_entries"),
            metric_sum(own, "mkpi_ingest_state_restore_records_total"),
        )
        print(f"{how}: ready in {restart.ready_seconds} s ({restart})", flush=True)
        return restart

    def stop(self, sig: int) -> None:
        assert self.worker is not None
        self.worker.send_signal(sig)
        self.worker.wait(120)


async def fed(settings: Settings, minutes: float, rate: float, seed: int) -> GroundTruth:
    truth = GroundTruth()
    await feed(settings, rate, minutes * 60, seed, truth)
    return truth


async def killed_while_fed(runs: Runs, settings: Settings, rate: float, seed: int) -> GroundTruth:
    """Feed for 30 s and kill the worker (SIGKILL) halfway: its stores then stand a flush or so
    behind the committed offsets, or ahead of nothing."""
    truth = GroundTruth()
    feeding = asyncio.create_task(feed(settings, rate, 30, seed, truth))
    await asyncio.sleep(15)
    runs.stop(signal.SIGKILL)
    await feeding
    return truth


def wait_accounted(settings: Settings, raw: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while sum(asyncio.run(accounted(settings)).values()) < raw:
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not account for every message")
        time.sleep(5)


def run_restarts(base: Settings, minutes: float, rate: float, seed: int, tree: Path) -> dict[str, Any]:
    settings = bench_settings(base)
    log_dir = Path(tempfile.mkdtemp(prefix="mkpi-restart-"))
    runs = Runs(settings, tree, log_dir)
    try:
        asyncio.run(ensure_topics(settings))
        runs.start("first start")
        truth = asyncio.run(fed(settings, minutes, rate, seed))
        wait_accounted(settings, truth.raw)
        runs.stop(signal.SIGTERM)
        stopped = runs.start("restart after SIGTERM")
        more = asyncio.run(killed_while_fed(runs, settings, rate, seed + 1))
        killed = runs.start("restart after SIGKILL")
        wait_accounted(settings, truth.raw + more.raw)
        runs.stop(signal.SIGTERM)
        empty = settings.replace(data_dir=str(log_dir / "empty-data-dir"))
        fresh = runs.start("start on an empty data directory", empty)
        runs.stop(signal.SIGTERM)
    finally:
        if runs.worker is not None and runs.worker.poll() is None:
            runs.worker.kill()
        remove_data(settings)
    entries = fresh.state_entries or 0
    return {
        "machine": machine(),
        "commit": commit(),
        "worker": "this checkout" if tree == REPO else str(tree.name),
        "minutes_fed": minutes,
        "rate": rate,
        "events": truth.raw,
        "restarts": [vars(r) for r in (stopped, killed, fresh)],
        "restart_ready_seconds": stopped.ready_seconds,
        "restart_after_kill_ready_seconds": killed.ready_seconds,
        "empty_dir_ready_seconds": fresh.ready_seconds,
        "restore_entries_per_second": round(entries / fresh.ready_seconds) if fresh.ready_seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline", help="run the worker of this commit instead (its own checkout)")
    parser.add_argument(
        "--record", action="store_true", help="put the figures in docs/benchmarks/latest.json"
    )
    args = parser.parse_args()
    tree = REPO if args.baseline is None else baseline_tree(StackSettings.from_env(), args.baseline)
    figures = run_restarts(Settings.from_env(), args.minutes, args.rate, args.seed, tree)
    print(json.dumps(figures, indent=2))
    if args.record:
        if args.baseline is None:
            record_figures("restart", figures, headline=True)
        else:
            record_figures("restart_baseline", figures, headline=False)


if __name__ == "__main__":
    main()
