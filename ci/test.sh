#!/usr/bin/env bash
# Runs every test: the host's unit and integration tests (real SDK-built filters), then the
# nginx integration tests (a real nginx with load_module).
set -euo pipefail
cd "$(dirname "$0")/.."
NGINX=${NGINX:-debian}
export NGINX_BUILD_DIR
NGINX_BUILD_DIR=$(bash ci/nginx-tree.sh "$NGINX")
cargo test --release --locked -p inwasm-host
cargo test --release --locked -p ngx-http-inwasm --test nginx
