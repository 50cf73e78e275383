#!/usr/bin/env bash
# `make test`: the lint bar, then every test against the first nginx build of $TEST_NGINX and
# what runs nginx against the others, then each fuzz target briefly.
#
# Two builds run in the background: the wasm filters, which only the tests need, while the
# lint and the modules build (each has long stretches on one core, the last crates and
# linking, that the other fills); and the fuzz targets while the tests run (which mostly wait
# on servers), so the suite also runs on a busy machine every time.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a flavors <<<"${TEST_NGINX:-debian 1.28}"
mkdir -p build
filters_log=build/filters.log
fuzz_log=build/fuzz-build.log
# In the background: a job with a process group of its own, stopped with this script.
background() {
  set -m
  "$@" &
  set +m
}
background bash -c "bash ci/build-filters.sh >$filters_log 2>&1"
filters=$!
fuzz=""
trap 'for job in $filters $fuzz; do kill -- -$job 2>/dev/null || true; done' EXIT
# Waits for background job $1 (a pid); on failure shows its log $2 and says what failed ($3).
finish() {
  if ! wait "$1"; then
    cat "$2" >&2
    echo "test: $3 failed" >&2
    exit 1
  fi
  cat "$2"
}

INWASM_NGINX=${flavors[0]} bash ci/clippy.sh
scope=all
for flavor in "${flavors[@]}"; do
  echo "== tests against nginx $flavor ($scope)"
  INWASM_NGINX=$flavor INWASM_PROFILE=release INWASM_FOR_TESTS=1 bash ci/build.sh
  if [ -n "$filters" ]; then
    finish "$filters" "$filters_log" "building the wasm filters"
    filters=""
    background bash -c "FUZZ_BUILD_ONLY=1 bash ci/fuzz.sh >$fuzz_log 2>&1"
    fuzz=$!
  fi
  INWASM_NGINX=$flavor INWASM_TEST_SCOPE=$scope bash ci/test.sh
  scope=nginx
done
finish "$fuzz" "$fuzz_log" "building the fuzz targets"
fuzz=""
echo "== fuzz targets, briefly"
FUZZ_SECONDS=5 bash ci/fuzz.sh
