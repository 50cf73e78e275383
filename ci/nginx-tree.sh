#!/usr/bin/env bash
# Prepares a configured nginx source tree that the module is compiled against, and prints
# the absolute path of its objs/ directory.
#   ci/nginx-tree.sh debian   Debian's nginx 1.22 (nginx-dev's tree, Debian's own flags), so
#                             the module loads into the stock /usr/sbin/nginx.
#   ci/nginx-tree.sh 1.28     nginx 1.28 from the nginx-src crate, configured --with-compat
#                             and built (objs/nginx is the binary the tests run).
#   ci/nginx-tree.sh 1.28-asan  the same, built with AddressSanitizer (`make asan`).
# Idempotent: a tree that is already configured (and built) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=${1:-debian}
root=$PWD/target/nginx

case "$flavor" in
  debian)
    tree=$root/debian
    if [ ! -f "$tree/objs/ngx_auto_config.h" ]; then
      rm -rf "$tree" && mkdir -p "$root"
      cp -r /usr/share/nginx/src "$tree"
      (
        cd "$tree"
        # shellcheck disable=SC1091
        . ./conf_flags
        ./configure --with-cc-opt="$(dpkg-buildflags --get CFLAGS) -fPIC" \
          --with-ld-opt="$(dpkg-buildflags --get LDFLAGS) -fPIC" "${NGX_CONF_FLAGS[@]}" >configure.log 2>&1
      ) || { echo "nginx-tree: configuring Debian's nginx failed, see $tree/configure.log" >&2; exit 1; }
    fi
    ;;
  1.28 | 1.28-asan)
    tree=$root/$flavor
    cc_opt=-fPIC ld_opt=""
    if [ "$flavor" = 1.28-asan ]; then
      cc_opt="-fPIC -fsanitize=address -fno-omit-frame-pointer -g" ld_opt="-fsanitize=address"
    fi
    # The modules the tests use besides the defaults (Debian's nginx has them too). An
    # absolute body temp path, as Debian's: the default compiled-code cache beside it
    # (var/wasm_cache) is then one for every nginx the tests start, not one per test prefix.
    flags=(--with-compat --with-threads --with-http_ssl_module --with-http_v2_module
      --with-http_auth_request_module --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" --prefix="$tree"
      --http-client-body-temp-path="$tree/var/body")
    if [ ! -x "$tree/objs/nginx" ] || [ "$(cat "$tree/configured-with" 2>/dev/null)" != "${flags[*]}" ]; then
      src=$(cargo metadata --format-version 1 --locked 2>/dev/null |
        python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="nginx-src"))')
      rm -rf "$tree" && mkdir -p "$root"
      cp -r "$src/nginx" "$tree"
      (
        cd "$tree"
        auto/configure "${flags[@]}" >configure.log 2>&1
        make -j2 >make.log 2>&1
      ) || { echo "nginx-tree: building nginx $flavor failed, see $tree/*.log" >&2; exit 1; }
      mkdir -p "$tree/var"
      echo "${flags[*]}" >"$tree/configured-with"
    fi
    ;;
  *)
    echo "usage: $0 debian|1.28|1.28-asan" >&2
    exit 2
    ;;
esac
echo "$tree/objs"
