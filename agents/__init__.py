"""The runtime and its adapters: the worker (``runtime``) over Kafka, Redis and Prometheus
(``kafka``, ``redis``, ``metrics``), with the settings every process reads (``settings``)."""
