#!/usr/bin/env bash
# `make asan`: the host's whole test suite (every ABI call with hostile arguments, the
# misbehaving filters, reused pooling slots) built with AddressSanitizer, so an out-of-bounds
# access or use-after-free in the host fails loudly. Its own target directory (target/asan);
# the first run builds everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
# The pinned stable toolchain has the sanitizer runtimes; its -Z flags need this.
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address"
# wasmtime turns out-of-bounds guest accesses into traps with its own SIGSEGV handler.
export ASAN_OPTIONS="handle_segv=0:allow_user_segv_handler=1:detect_leaks=1"
# Lives as long as the process on purpose: the test harness's engine and epoch ticker.
mkdir -p target/asan
echo "leak:inwasm_host::engine::EpochTicker::start" >target/asan/lsan-suppressions.txt
export LSAN_OPTIONS="suppressions=$PWD/target/asan/lsan-suppressions.txt"
# --target keeps build scripts and proc-macros out of the instrumented build.
cargo test --locked --release -p inwasm-host --target x86_64-unknown-linux-gnu --target-dir target/asan "$@"
