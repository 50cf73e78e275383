#!/usr/bin/env bash
# Builds the host, the nginx module (against the nginx chosen by $INWASM_NGINX), the Envoy
# module and the `inwasm` command, and leaves build/ngx_http_inwasm_module.so (NGINX=1.28:
# build/ngx_http_inwasm_module-1.28.so), build/libinwasm.so and build/inwasm. With the `dist` profile
# (whole-program optimisation, what is shipped and benchmarked; see Cargo.toml) unless
# INWASM_PROFILE says another (`make test` and `make demo` use `release`, minutes faster).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=ci/nginx-env.sh
. ci/nginx-env.sh
profile=${INWASM_PROFILE:-dist}
# INWASM_MODULES=nginx: the nginx module alone (the demo needs no Envoy, no command).
packages=(-p ngx-http-inwasm -p inwasm-envoy -p inwasm-cli)
[ "${INWASM_MODULES:-all}" = nginx ] && packages=(-p ngx-http-inwasm)
# INWASM_FOR_TESTS=1 (`make test`): the modules and every test binary in one build, with the
# features the tests' dependencies bring, so `cargo test` then compiles nothing again (built
# apart, wasmtime and cranelift would be compiled twice, once for each set of features).
[ "${INWASM_FOR_TESTS:-}" = 1 ] && packages=(-p inwasm-host -p ngx-http-inwasm -p inwasm-envoy -p inwasm-cli --lib --bins --tests)
cargo build --profile "$profile" --quiet --locked "${packages[@]}"
mkdir -p build
suffix=""
[ "$flavor" = debian ] || suffix="-$flavor"
install -m 0644 "target/$profile/libngx_http_inwasm_module.so" "build/ngx_http_inwasm_module$suffix.so"
if [ "${INWASM_MODULES:-all}" != nginx ]; then
  install -m 0644 "target/$profile/libinwasm.so" build/libinwasm.so
  install -m 0755 "target/$profile/inwasm" build/inwasm
fi
