#!/usr/bin/env bash
# `cargo clippy -D warnings` over the workspace, every target (the nginx module against the
# nginx chosen by $INWASM_NGINX).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/nginx-env.sh
. ci/nginx-env.sh
cargo clippy --quiet --release --locked --workspace --exclude nginx-source --all-targets -- -D warnings
