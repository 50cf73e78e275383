#!/usr/bin/env bash
# Runs the demo in the foreground: nginx with the module and the header-rewriting example
# filter (examples/headers) on 127.0.0.1:8080. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=${INWASM_NGINX:-debian}
unset NGINX # nginx reads NGINX as a list of inherited sockets
if [ "$flavor" = debian ]; then
  nginx=/usr/sbin/nginx
else
  nginx=$PWD/target/nginx/$flavor/objs/nginx
  sed "s|build/ngx_http_inwasm_module.so|build/ngx_http_inwasm_module-$flavor.so|" examples/headers/nginx.conf >build/demo-nginx.conf
fi
conf=examples/headers/nginx.conf
[ "$flavor" = debian ] || conf=build/demo-nginx.conf
"$nginx" -p "$PWD" -c "$conf" -t -q
cat <<MSG

inwasm demo: nginx $("$nginx" -v 2>&1 | sed 's|.*/||') with the header-rewriting filter on http://127.0.0.1:8080/
Try, in another terminal:

    curl -si -H 'x-internal: secret' http://127.0.0.1:8080/

You should see x-powered-by, cache-control and x-inwasm-request-ms response headers, and a
body saying the upstream saw x-hello=[world] and an empty x-internal. Ctrl-C stops nginx.

MSG
exec "$nginx" -p "$PWD" -c "$conf"
