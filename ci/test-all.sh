#!/usr/bin/env bash
# `make test`: the lint bar, then every test against the first nginx build of $TEST_NGINX and
# what runs nginx against the others, then each fuzz target briefly.
#
# The wasm filters, which only the tests need, build meanwhile: the lint and the modules'
# build each have long stretches on one core (the last crates, linking) that the filters'
# build fills, and the other way round.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a flavors <<<"${TEST_NGINX:-debian 1.28}"
mkdir -p build
filters_log=build/filters.log
set -m # the filters' build gets a process group of its own, stopped with it on failure
bash ci/build-filters.sh >"$filters_log" 2>&1 &
filters=$!
set +m
trap 'kill -- -$filters 2>/dev/null || true' EXIT

INWASM_NGINX=${flavors[0]} bash ci/clippy.sh
scope=all
for flavor in "${flavors[@]}"; do
  echo "== tests against nginx $flavor ($scope)"
  INWASM_NGINX=$flavor INWASM_PROFILE=release INWASM_FOR_TESTS=1 bash ci/build.sh
  if [ -n "$filters" ]; then
    if ! wait "$filters"; then
      cat "$filters_log" >&2
      echo "test: building the wasm filters failed" >&2
      exit 1
    fi
    cat "$filters_log"
    filters=""
  fi
  INWASM_NGINX=$flavor INWASM_TEST_SCOPE=$scope bash ci/test.sh
  scope=nginx
done
echo "== fuzz targets, briefly"
FUZZ_SECONDS=10 bash ci/fuzz.sh
