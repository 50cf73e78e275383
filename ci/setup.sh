#!/usr/bin/env bash
# Installs everything the build and the tests need on a Debian 12 machine that has only the
# Rust toolchain. Idempotent: when everything is present it prints nothing and exits fast.
set -euo pipefail

APT_PACKAGES=(
  nginx nginx-dev                 # stock nginx 1.22 and its configure-able source tree
  libclang-dev                    # bindgen (nginx-sys)
  rustc-web cargo-web rust-web-src lld wasi-libc   # wasm32 filter toolchain
  wrk curl python3-venv
  openssl                         # certificates for the TLS upstreams of the tests
  dpkg-dev                        # make deb (dpkg-shlibdeps)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# AssemblyScript examples build with npm; the machine's own Node.js will do, else Debian's.
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
