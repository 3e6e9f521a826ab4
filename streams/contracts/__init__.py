"""Contracts: the models of events, deltas, outputs, the state journal and commit points, with
their schema versions."""
