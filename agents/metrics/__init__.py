"""Prometheus adapters: the registry of every metric, and the KPI agent's gauge sink."""
