#!/usr/bin/env bash
# Install everything mkpi needs on a fresh Debian 12 machine with Python 3.11, Java 17 and
# Maven: Debian packages, a virtualenv with the project, and Apache Kafka's jars.
# Idempotent: a second run checks and returns quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'bootstrap: %s\n' "$*" >&2; exit 1; }

command -v java >/dev/null || die "java is missing: install a Java 17 runtime (apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn is missing: install Maven (apt-get install maven); it fetches Kafka's jars once"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || die "$PYTHON is missing: mkpi needs Python 3.11 (or set PYTHON=...)"

# MKPI_STACK_WITH_CHROMIUM / MKPI_STACK_WITH_PROMTOOL (devtools/stack/settings.py): 0 or false skips one.
wanted() { case "${1,,}" in 0|false|no|off) return 1 ;; *) return 0 ;; esac; }

debian_packages=()
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null || debian_packages+=(redis-server)
# openssl makes the local stack's TLS certificates (the broker's SASL_SSL and SSL listeners).
command -v openssl >/dev/null || debian_packages+=(openssl)
# Debian's Chromium, for the live board's browser test.
if wanted "${MKPI_STACK_WITH_CHROMIUM:-1}" && [ ! -x /usr/bin/chromium ]; then
  debian_packages+=(chromium)
fi
if wanted "${MKPI_STACK_WITH_PROMTOOL:-1}" && [ ! -x .tools/promtool ]; then
  debian_packages_download=(prometheus)
else
  debian_packages_download=()
fi

if [ ${#debian_packages[@]} -gt 0 ] || [ ${#debian_packages_download[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "apt-get update"
  $sudo apt-get update -qq
  if [ ${#debian_packages[@]} -gt 0 ]; then
    say "installing Debian packages: ${debian_packages[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${debian_packages[@]}" >/dev/null
  fi
  if [ ${#debian_packages_download[@]} -gt 0 ]; then
    # promtool only: unpack Debian's prometheus package instead of installing (and starting) a server.
    say "extracting promtool from Debian's prometheus package"
    work=$(mktemp -d)
    (cd "$work" && apt-get download prometheus >/dev/null && dpkg-deb -x prometheus_*.deb root)
    mkdir -p .tools
    cp "$work/root/usr/bin/promtool" .tools/promtool
    rm -rf "$work"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.mkpi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-dev.lock -nt "$stamp" ]; then
  say "installing mkpi and its locked dependencies (requirements-dev.lock) into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi

say "making sure Apache Kafka's jars are present"
.venv/bin/mkpi stack install
