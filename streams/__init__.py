"""The pure part of the product: contracts (models and schema versions) and core (validation,
attribution, sessions, windows, KPI math, alerts), without I/O."""
