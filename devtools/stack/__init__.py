"""The local stack: Apache Kafka and Redis on this machine, their settings, and worker processes."""
