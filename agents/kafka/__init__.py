"""Kafka adapters: client options, topics, the checkpoint of a transaction, fencing, the state
journal, the KPI agent's Kafka outputs and gap reads, Faust's transport."""
