"""Core: the pure logic of ingest and the KPI engine; I/O stays in ``agents``."""
