"""A worker of its own for one measurement: settings with fresh topics and keys, the process,
and the clean-up afterwards (shared by the benchmark and the soak run)."""

from __future__ import annotations

import asyncio
import os
import platform
import secrets
import shutil
import uuid
from pathlib import Path

from agents.settings import Settings
from devtools.stack.cleanup import remove_run_data
from devtools.stack.process import free_port

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    memory = f"{memory_kb / 1024 / 1024:.1f} GiB"
    return f"{os.cpu_count()} cores ({model}), {memory}, Python {platform.python_version()}"


def bench_settings(base: Settings) -> Settings:
    """Topics, worker name and web port of one run of its own."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    return base.replace(
        topic_prefix=prefix,
        raw_topic=f"{prefix}.raw",
        worker_name=f"{prefix}-c",
        pseudonymization_key=base.ingest.pseudonymization_key or secrets.token_hex(32),
        web_port=free_port(),
        raw_keyed_by_subject=True,  # the generator keys raw events by subject
    )


def remove_data(settings: Settings) -> None:
    """The run's topics, Redis keys and the workers' stores on disk go when it ends (a million
    events leave ten million duplicate-check keys behind)."""
    asyncio.run(remove_run_data(settings, [settings.topics.topic_prefix]))
    shutil.rmtree(settings.worker_dir.parent, ignore_errors=True)
