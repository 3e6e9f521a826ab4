"""Redis adapters: connections, the view (the KPI agent's Redis sink), unique visitor sketches,
and waiting out an outage."""
