"""Side-by-side throughput benchmark of the pipeline against the Python Kafka client's ceiling."""
