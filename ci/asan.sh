#!/usr/bin/env bash
# `make asan`: the host's whole test suite (every ABI call with hostile arguments, the
# misbehaving filters, reused pooling slots), then the nginx integration suite against
# nginx 1.28 and the module, both built with AddressSanitizer, so an out-of-bounds access or
# use-after-free in the host, the module or nginx itself fails loudly. Its own target
# directory (target/asan); the first run builds everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
# wasmtime turns out-of-bounds guest accesses into traps with its own SIGSEGV handler.
asan_options="handle_segv=0:allow_user_segv_handler=1"
# Lives as long as the process on purpose: the test harness's engine and epoch ticker.
mkdir -p target/asan
echo "leak:inwasm_host::engine::EpochTicker::start" >target/asan/lsan-suppressions.txt
export LSAN_OPTIONS="suppressions=$PWD/target/asan/lsan-suppressions.txt"
# --target keeps build scripts and proc-macros out of the instrumented build.
asan_cargo=(--locked --release --target x86_64-unknown-linux-gnu --target-dir target/asan)

echo "== the host's tests under AddressSanitizer"
# The pinned stable toolchain has the sanitizer runtimes; its -Z flags need RUSTC_BOOTSTRAP
# (set only here: elsewhere it would make cargo rebuild the ordinary build).
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS="$asan_options:detect_leaks=1" \
  cargo test "${asan_cargo[@]}" -p inwasm-host "$@"

echo "== the nginx suite: nginx 1.28 and the module built with AddressSanitizer"
export INWASM_NGINX=1.28-asan
# shellcheck source=ci/nginx-env.sh
. ci/nginx-env.sh
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" cargo build "${asan_cargo[@]}" -p ngx-http-inwasm
install -m 0644 target/asan/x86_64-unknown-linux-gnu/release/libngx_http_inwasm_module.so \
  build/ngx_http_inwasm_module-1.28-asan.so
# Every nginx process writes its reports to a file of its own; nginx frees its memory at
# exit by design, so leaks are not reported.
reports=$PWD/target/asan/nginx-reports
rm -rf "$reports" && mkdir -p "$reports"
status=0
ASAN_OPTIONS="$asan_options:detect_leaks=0:log_path=$reports/asan" \
  cargo test --locked --release --no-fail-fast -p ngx-http-inwasm "$@" || status=$?
if compgen -G "$reports/asan.*" >/dev/null; then
  cat "$reports"/asan.*
  echo "asan: AddressSanitizer reported errors in nginx (above)" >&2
  exit 1
fi
[ "$status" -eq 0 ] || { echo "asan: tests failed (above)" >&2; exit "$status"; }
echo "asan: no errors"
