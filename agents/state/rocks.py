"""Opening RocksDB (through rocksdict) in the worker's memory budget.

Every ingest store of a worker shares one block cache and one write buffer manager (whose
memtables are charged to that cache), so their memory is a setting, not a function of how many
partitions or subjects the worker has. A store that cannot be opened because its files are
damaged is removed and made again empty: what it held comes back from its changelog on Kafka.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import rocksdict

from agents.settings import Settings

log = logging.getLogger(__name__)

MB = 1024 * 1024


class StoreBudget:
    """The block cache and write buffers all of a worker's ingest stores share."""

    def __init__(self, block_cache_mb: int, write_buffer_mb: int) -> None:
        self.cache = rocksdict.Cache(block_cache_mb * MB)
        self.write_buffer_mb = write_buffer_mb
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            write_buffer_mb * MB, False, self.cache
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreBudget:
        worker = settings.worker
        return cls(worker.store_block_cache_mb, worker.store_write_buffer_mb)

    def options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_paranoid_checks(True)
        options.set_max_open_files(64)
        options.set_keep_log_file_num(2)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(max(1, self.write_buffer_mb // 4) * MB)
        options.set_max_write_buffer_number(2)
        # Index and filter blocks live in the cache too (memory stays the budget), partitioned
        # so that a lookup loads a small part of them: with whole ones, a cache that cannot
        # hold them all made a lookup of a random key (an event id's digest) 20x slower.
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options


def open_store(path: Path, budget: StoreBudget, column_families: tuple[str, ...]) -> rocksdict.Rdict:
    """The store at ``path``; a damaged one is removed first and made again empty (logged).
    A store locked by another process is an error: two workers must not share a folder."""
    path.mkdir(parents=True, exist_ok=True)
    families = {name: budget.options() for name in column_families}
    try:
        return rocksdict.Rdict(str(path), budget.options(), column_families=families)
    except Exception as exc:
        if "lock" in str(exc).lower():
            raise RuntimeError(
                f"the state store {path} is in use by another process: give each worker on a "
                "machine its own MKPI_WORKER_NAME (or MKPI_DATA_DIR)"
            ) from exc
        log.error("the state store %s cannot be opened (%s); it is removed and rebuilt from Kafka", path, exc)
    remove_store(path)
    path.mkdir(parents=True, exist_ok=True)
    return rocksdict.Rdict(str(path), budget.options(), column_families=families)


def remove_store(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def table_options(settings: Settings) -> dict[str, object]:
    """Faust's RocksDB store options for the KPI table (one database per delta partition)."""
    worker = settings.worker
    return {
        "driver": "rocksdict",
        "block_cache_size": worker.table_block_cache_mb * MB,
        "block_cache_compressed_size": 0,
        "write_buffer_size": worker.table_write_buffer_mb * MB,
        "max_write_buffer_number": 2,
        "max_open_files": 64,
    }
