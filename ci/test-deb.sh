#!/usr/bin/env bash
# `make test-deb`: the package for real, on this machine (as root): installs the .deb that
# `make deb` left with dpkg, starts Debian's /usr/sbin/nginx on a configuration that loads the
# module only through /etc/nginx/modules-enabled (as Debian's nginx.conf does) and runs a
# filter, requests through it, reloads, requests again, stops nginx, purges the package and
# checks that nothing of it is left: its files, the enabling link, the compiled-code cache.
set -euo pipefail
cd "$(dirname "$0")/.."
package=libnginx-mod-http-inwasm
deb=$(ls -t build/${package}_*.deb 2>/dev/null | head -n1)
[ -n "$deb" ] || { echo "test-deb: no build/${package}_*.deb: run make deb" >&2; exit 1; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

dir=$(mktemp -d)
# Debian's prefix (no -p): the enabling file's load_module path is relative to it.
nginx=(/usr/sbin/nginx -c "$dir/nginx.conf")
fail() {
  echo "test-deb: $*" >&2
  cat "$dir/error.log" >&2 2>/dev/null || true
  exit 1
}
cleanup() {
  [ -f "$dir/nginx.pid" ] && $SUDO "${nginx[@]}" -s stop 2>/dev/null || true
  $SUDO dpkg --purge "$package" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

$SUDO dpkg -i "$deb" >/dev/null
files=$(dpkg -L "$package")
[ -L /etc/nginx/modules-enabled/50-mod-http-inwasm.conf ] || fail "the module was not enabled"
[ "$(stat -c %U /var/lib/nginx/wasm_cache)" = www-data ] || fail "no cache directory for www-data"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/nginx.conf" <<EOF
include /etc/nginx/modules-enabled/*.conf;
daemon on;
worker_processes 1;
error_log $dir/error.log info;
pid $dir/nginx.pid;
events { worker_connections 64; }
wasm { module headers $PWD/build/filters/example_headers.wasm; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    server {
        listen 127.0.0.1:$port;
        location / { proxy_wasm headers 'response add x-powered-by inwasm'; return 200 "served\n"; }
    }
}
EOF
# Answers through the filter, within 20 s.
served() {
  for _ in $(seq 100); do
    if curl -s -D - "http://127.0.0.1:$port/" 2>/dev/null | grep -qi '^x-powered-by: inwasm'; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}
$SUDO "${nginx[@]}" || fail "Debian's nginx did not start with the packaged module"
served || fail "no answer through the filter"
ls /var/lib/nginx/wasm_cache/*.cwasm >/dev/null 2>&1 || fail "nothing in the default compiled-code cache"
$SUDO "${nginx[@]}" -s reload 2>/dev/null
sleep 1
served || fail "no answer through the filter after a reload"
$SUDO "${nginx[@]}" -s quit 2>/dev/null
for _ in $(seq 100); do [ -f "$dir/nginx.pid" ] || break; sleep 0.2; done

$SUDO dpkg --purge "$package" >/dev/null
left=()
while read -r path; do
  if [ -f "$path" ] || [ -L "$path" ]; then left+=("$path"); fi
done <<<"$files"
for path in /etc/nginx/modules-enabled/50-mod-http-inwasm.conf /var/lib/nginx/wasm_cache; do
  if [ -e "$path" ] || [ -L "$path" ]; then left+=("$path"); fi
done
[ ${#left[@]} -eq 0 ] || fail "left behind after purge: ${left[*]}"
echo "test-deb: $deb installed, served, reloaded, served, purged; nothing left"
