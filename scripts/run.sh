#!/usr/bin/env bash
# Install everything, then run Kafka + Redis + a worker + the event generator until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/mkpi run "$@"
