"""Development tools beside the runtime: the event generator, the local stack (Kafka, Redis,
worker processes), the schema and dashboard writers. The runtime never imports them."""
