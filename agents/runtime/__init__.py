"""The worker: the Faust app, the ingest and repartition stages, the KPI agent, the web server."""
