#!/usr/bin/env bash
# Builds the host and the nginx module (against the nginx chosen by $NGINX) and leaves
# build/ngx_http_inwasm_module.so (for NGINX=1.28 also build/nginx-1.28/sbin/nginx).
set -euo pipefail
cd "$(dirname "$0")/.."
NGINX=${NGINX:-debian}
export NGINX_BUILD_DIR
NGINX_BUILD_DIR=$(bash ci/nginx-tree.sh "$NGINX")
cargo build --release --quiet --locked -p inwasm-host -p ngx-http-inwasm
mkdir -p build
suffix=""
[ "$NGINX" = debian ] || suffix="-$NGINX"
install -m 0644 target/release/libngx_http_inwasm_module.so "build/ngx_http_inwasm_module$suffix.so"
