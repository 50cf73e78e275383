#!/usr/bin/env bash
# Runs every test: the host's unit and integration tests (real SDK-built filters) and the
# nginx integration tests (a real nginx with load_module), in one cargo invocation so the
# build is the one `make build` made (same packages, same features: nothing recompiles).
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=${INWASM_NGINX:-debian}
unset NGINX # nginx reads NGINX as a list of inherited sockets
export NGINX_BUILD_DIR
NGINX_BUILD_DIR=$(bash ci/nginx-tree.sh "$flavor")
INWASM_NGINX=$flavor cargo test --release --locked -p inwasm-host -p ngx-http-inwasm
