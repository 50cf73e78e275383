#!/usr/bin/env bash
# Runs every test: the host's unit and integration tests (real SDK-built filters), the nginx
# integration tests (a real nginx with load_module), the Envoy tests (a real Envoy 1.40 with
# the module) and the conformance suite (Envoy's V8 vs Envoy and nginx with inwasm), in one
# cargo invocation. The proxies load the modules in build/ (`make test` builds them with the
# `release` profile, as the test binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/nginx-env.sh
. ci/nginx-env.sh
packages=(-p inwasm-host -p ngx-http-inwasm -p inwasm-envoy -p inwasm-cli)
# INWASM_TEST_SCOPE=nginx (`make test`'s second nginx build): only the test targets that run
# nginx, the nginx suite and the conformance suite; the host's and Envoy's own tests do not
# depend on it. The same packages are named either way, so cargo builds the same features
# and rebuilds only what depends on nginx.
targets=()
if [ "${INWASM_TEST_SCOPE:-all}" = nginx ]; then
  targets=(--test conformance)
  for test in ngx-module/tests/*.rs; do
    targets+=(--test "$(basename "$test" .rs)")
  done
fi
INWASM_NGINX=$flavor cargo test --release --locked "${packages[@]}" "${targets[@]}"
