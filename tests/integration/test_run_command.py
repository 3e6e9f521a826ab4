"""`mkpi run`, as a new user runs it: organic traffic per campaign on /metrics within 90 s,
and the same numbers on the KPI topic."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, isolated_settings, read_topic_until, wait_for_accounting

pytestmark = pytest.mark.kafka


def organic_by_campaign(metrics_url: str) -> dict[tuple[str, str, float], float]:
    """{(campaign, window, window start): value} of mkpi_kpi_current for organic traffic per campaign."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values: dict[tuple[str, str], float] = {}
    starts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name not in ("mkpi_kpi_current", "mkpi_kpi_current_window_start_seconds"):
                continue
            if labels["kpi"] != "organic_traffic" or labels["channel"] != "*":
                continue
            series = (labels["campaign"], labels["window"])
            if sample.name == "mkpi_kpi_current":
                values[series] = sample.value
            elif sample.name == "mkpi_kpi_current_window_start_seconds":
                starts[series] = sample.value
    return {
        (campaign, w, starts[(campaign, w)]): v
        for (campaign, w), v in values.items()
        if campaign not in ("*", "(none)")
    }


def ingested(metrics_url: str) -> float:
    """mkpi_ingest_messages_total of one worker process, summed over its raw partitions."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mkpi_ingest_messages_total"
    )


def test_run_shows_organic_traffic_per_campaign_within_90_seconds(tmp_path: Path) -> None:
    """With ``--ingest-processes 1`` (the default on two cores): the KPIs come from the agent's
    process, the raw events are read by the ingest process beside it."""
    settings = isolated_settings()
    env = {**os.environ, **settings.as_environment()}
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - closed below
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mkpi",
            "run",
            "--ingest-processes",
            "1",
            "--rate",
            "100",
            "--seed",
            "5",
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its worker child is in the same group, for cleanup
    )
    started = time.monotonic()
    seen: dict[tuple[str, str, float], float] = {}
    try:
        while time.monotonic() - started < 90 and not any(v > 0 for v in seen.values()):
            time.sleep(1)
            try:
                seen = organic_by_campaign(f"{settings.web.url}/metrics")
            except OSError:
                continue
        assert any(v > 0 for v in seen.values()), (tmp_path / "run.log").read_text()[-3000:]
        banner = (tmp_path / "run.log").read_text()
        ingest_urls = re.findall(r"\(ingest\): (http://\S+/metrics)", banner)
        assert len(ingest_urls) == 1, banner[-3000:]
        assert ingested(ingest_urls[0]) > 0
        assert ingested(f"{settings.web.url}/metrics") == 0, "the agent's process does not ingest"
        # Stop generating, let the last flush land, then compare both outputs.
        run.send_signal(signal.SIGINT)
        run.wait(60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        log.close()
    output = (tmp_path / "run.log").read_text()
    assert f"{settings.web.url}/metrics" in output and settings.topics.kpi_updates_topic in output


def test_metrics_and_kpi_topic_agree_while_running(tmp_path: Path) -> None:
    settings = isolated_settings()
    env = {**os.environ, **settings.as_environment()}
    with open(tmp_path / "run.log", "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "mkpi", "worker"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            generate = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mkpi",
                    "generate",
                    "--count",
                    "3000",
                    "--rate",
                    "0",
                    "--seed",
                    "9",
                ],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert generate.returncode == 0, generate.stderr
            assert "produced 3000 messages" in generate.stdout
            # Ingest has published everything; the agent may still be applying deltas, so compare
            # until metrics and topic agree, each time on a fresh scrape and the records so far.
            totals = asyncio.run(wait_for_accounting(settings, 3000, timeout=120))
            assert sum(totals["outcomes"].values()) == 3000
            disagreements: list[object] = ["not compared yet"]

            def matches(records: list) -> bool:
                latest = {}
                for record in records:
                    kpi, size, start, channel, campaign = json.loads(record.key)
                    if kpi == "organic_traffic" and channel == "*":
                        latest[(campaign, f"{size}s", float(start))] = json.loads(record.value)["value"]
                gauges = organic_by_campaign(f"{settings.web.url}/metrics")
                disagreements[:] = [(k, v, latest.get(k)) for k, v in gauges.items() if latest.get(k) != v]
                if not gauges:
                    disagreements.append("no organic traffic per campaign on /metrics")
                return not disagreements

            asyncio.run(read_topic_until(settings, settings.topics.kpi_updates_topic, matches, timeout=90))
            assert not disagreements
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
