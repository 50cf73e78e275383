#!/usr/bin/env bash
# `make test-under-load`: `make test` RUNS times in a row (default 3) while stress-ng keeps
# every CPU busy, as on a machine shared with other work. The suite must stay green: no test
# may race the machine's speed. stress-ng comes from Debian (installed here if missing) and
# is stopped when this script ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
if ! command -v stress-ng >/dev/null; then
  echo "test-under-load: installing stress-ng"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends stress-ng >/dev/null
fi
stress-ng --cpu "$(nproc)" --quiet &
stress=$!
trap 'kill $stress 2>/dev/null; wait $stress 2>/dev/null || true' EXIT
for run in $(seq 1 "$runs"); do
  started=$(date +%s)
  echo "== test-under-load: run $run of $runs, every CPU kept busy by stress-ng"
  make test
  echo "== test-under-load: run $run passed in $(( $(date +%s) - started )) s"
done
echo "test-under-load: $runs runs in a row passed"
