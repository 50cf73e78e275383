#!/usr/bin/env bash
# Runs every fuzz target (ci/fuzz, cargo fuzz with libFuzzer and AddressSanitizer) for
# FUZZ_SECONDS each (default 10; `make test` makes a quick pass of 5, `make fuzz` runs 300).
# cargo-fuzz is installed into target/tools the first time. Findings stay in
# ci/fuzz/artifacts/<target>/, with the input that reproduces them.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-10}
tools=$PWD/target/tools
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  echo "fuzz: installing cargo-fuzz into target/tools"
  cargo install --quiet --locked --root "$tools" cargo-fuzz@0.13.2
fi
# The pinned stable toolchain has the sanitizer runtimes; its -Z flags need this.
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# FUZZ_BUILD_ONLY=1 (`make test`, while its tests run): only the targets' build.
if [ "${FUZZ_BUILD_ONLY:-}" = 1 ]; then
  "$tools/bin/cargo-fuzz" build --fuzz-dir ci/fuzz >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  exit 0
fi
for target in map property_path envoy_config http_response; do
  echo "fuzz: $target for ${seconds}s"
  status=0
  "$tools/bin/cargo-fuzz" run --fuzz-dir ci/fuzz "$target" -- -max_total_time="$seconds" -print_final_stats=0 \
    >"$log" 2>&1 || status=$?
  grep -E "^(==|SUMMARY|Done|panicked|thread)|ERROR" "$log" || true
  if [ -n "$(ls -A "ci/fuzz/artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target found a failure: ci/fuzz/artifacts/$target" >&2
    exit 1
  fi
  if [ "$status" -ne 0 ]; then
    tail -30 "$log" >&2
    echo "fuzz: $target failed (exit $status)" >&2
    exit 1
  fi
done
