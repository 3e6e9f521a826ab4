"""State on local disk: RocksDB stores for ingest's per-subject state and the KPI table, in a
memory budget set by the worker's settings, each recording the changelog offset it reflects."""
