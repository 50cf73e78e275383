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
# INWASM_TEST_SCOPE=nginx (`make test`'s second nginx build): only what runs nginx, the nginx
# suite and the conformance suite; the host's and Envoy's own tests do not depend on it.
if [ "${INWASM_TEST_SCOPE:-all}" = nginx ]; then
  INWASM_NGINX=$flavor cargo test --release --locked -p ngx-http-inwasm
  INWASM_NGINX=$flavor cargo test --release --locked -p inwasm-envoy --test conformance
else
  INWASM_NGINX=$flavor cargo test --release --locked -p inwasm-host -p ngx-http-inwasm -p inwasm-envoy
fi
