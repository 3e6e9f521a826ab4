#!/usr/bin/env bash
# Install everything, then run Kafka + Redis + a worker + the event generator until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [ -z "${MKPI_PSEUDONYMIZATION_KEY:-}" ] && [ -z "${MKPI_INSECURE_DEV_MODE:-}" ]; then
  echo "run.sh: no MKPI_PSEUDONYMIZATION_KEY set; running in MKPI_INSECURE_DEV_MODE (a public key)" >&2
  export MKPI_INSECURE_DEV_MODE=true
fi
exec .venv/bin/mkpi run "$@"
