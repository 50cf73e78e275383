#!/usr/bin/env bash
# Runs every test: the host's unit and integration tests (real SDK-built filters) and the
# nginx integration tests (a real nginx with load_module), in one cargo invocation so the
# build is the one `make build` made (same packages, same features: nothing recompiles).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/nginx-env.sh
. ci/nginx-env.sh
INWASM_NGINX=$flavor cargo test --release --locked -p inwasm-host -p ngx-http-inwasm
