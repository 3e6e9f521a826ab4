"""The KPI table's stores on disk, checked before Faust opens them.

Faust keeps each delta partition's table in a RocksDB database with the changelog offset it
reflects, and at assignment reads the changelog from there on. It trusts what it finds: a
damaged database stops the worker, and one left by an earlier changelog topic of the same name
(the topics deleted and made again) would be read as current. Before the worker starts, each
database is opened once; one that cannot be, or whose offset lies past its changelog's end, is
removed, and Faust rebuilds it from the changelog.
"""

from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.kafka.connections import kafka_options
from agents.settings import KPI_TABLE_NAME, Settings

log = logging.getLogger(__name__)

#: Where Faust keeps the offset in each of its RocksDB databases.
FAUST_OFFSET_KEY = b"__faust\x00offset__"


def table_store_paths(settings: Settings) -> dict[int, Path]:
    """The KPI table's databases on this worker's disk, by partition."""
    tables = settings.worker_dir / "v1" / "tables"
    found = {}
    for path in tables.glob(f"{KPI_TABLE_NAME}-*.db"):
        partition = path.name.removeprefix(f"{KPI_TABLE_NAME}-").removesuffix(".db")
        if partition.isdigit():
            found[int(partition)] = path
    return found


def persisted_offset(path: Path) -> int | None:
    """The changelog offset a database records (None: none); raises when it cannot be read."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        raw = db.get(FAUST_OFFSET_KEY)
        return None if raw is None else int(raw)
    finally:
        db.close()
        del db
        gc.collect()  # rocksdict lets go of the database's lock when collected


async def check_table_stores(settings: Settings) -> list[int]:
    """Remove the databases that cannot be trusted; the partitions whose were removed."""
    paths = table_store_paths(settings)
    if not paths:
        return []
    topic = settings.topics.kpi_table_changelog_topic
    consumer = AIOKafkaConsumer(**kafka_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in paths])
    finally:
        await consumer.stop()
    removed = []
    for partition, path in sorted(paths.items()):
        end = ends.get(TopicPartition(topic, partition), 0)
        try:
            offset = persisted_offset(path)
        except Exception as exc:  # rocksdict raises plain Exceptions (corruption, I/O)
            if "lock" in str(exc).lower():
                raise RuntimeError(
                    f"the KPI table's store {path} is in use by another process: give each worker on "
                    "a machine its own MKPI_WORKER_NAME (or MKPI_DATA_DIR)"
                ) from exc
            why = f"it cannot be opened ({exc})"
        else:
            if offset is None or offset < end:
                continue
            why = f"it records changelog offset {offset}, past the end of {topic} ({end})"
        log.error(
            "the KPI table's store of partition %d is removed and rebuilt from %s: %s", partition, topic, why
        )
        shutil.rmtree(path, ignore_errors=True)
        removed.append(partition)
    return removed
