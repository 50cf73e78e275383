#!/usr/bin/env bash
# Runs every test: the host's unit and integration tests (real SDK-built filters), then the
# nginx integration tests (a real nginx with load_module).
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=${INWASM_NGINX:-debian}
unset NGINX # nginx reads NGINX as a list of inherited sockets
export NGINX_BUILD_DIR
NGINX_BUILD_DIR=$(bash ci/nginx-tree.sh "$flavor")
cargo test --release --locked -p inwasm-host
INWASM_NGINX=$flavor cargo test --release --locked -p ngx-http-inwasm --test nginx
