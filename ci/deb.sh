#!/usr/bin/env bash
# `make deb`: the nginx module as Debian packages its nginx modules, from the `dist` build
# against Debian's nginx: build/libnginx-mod-http-inwasm_VERSION_ARCH.deb with
#   /usr/lib/nginx/modules/ngx_http_inwasm_module.so
#   /usr/share/nginx/modules-available/mod-http-inwasm.conf   (its load_module line)
# enabled on installation through /etc/nginx/modules-enabled/50-mod-http-inwasm.conf, and
# depending on the exact nginx ABI it was built against (Debian's nginx provides
# nginx-abi-VERSION), so an nginx upgrade cannot load a mismatched module. The installation
# creates the default compiled-code cache, /var/lib/nginx/wasm_cache, for nginx's worker user
# (www-data); purging the package removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

package=libnginx-mod-http-inwasm
version=$(sed -n 's/^version = "\(.*\)"/\1/p' ngx-module/Cargo.toml | head -n1)-1
arch=$(dpkg --print-architecture)
abi=$(dpkg-query -W -f='${Provides}' nginx | tr ',' '\n' | sed -n 's/^ *\(nginx-abi-[^ ]*\).*/\1/p')
if [ -z "$abi" ]; then
  echo "deb: Debian's nginx package provides no nginx-abi-*: is nginx installed? (ci/setup.sh)" >&2
  exit 1
fi
module=build/ngx_http_inwasm_module.so
[ -f "$module" ] || { echo "deb: $module is missing: run make build" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -D -m 0644 "$module" "$root/usr/lib/nginx/modules/ngx_http_inwasm_module.so"
strip --strip-unneeded --remove-section=.comment "$root/usr/lib/nginx/modules/ngx_http_inwasm_module.so"
install -d "$root/usr/share/nginx/modules-available" "$root/usr/share/doc/$package" "$root/DEBIAN"
echo "load_module modules/ngx_http_inwasm_module.so;" >"$root/usr/share/nginx/modules-available/mod-http-inwasm.conf"
cat >"$root/usr/share/doc/$package/copyright" <<'EOF'
inwasm: in-process WebAssembly (proxy-wasm) filters for nginx and Envoy.
License: Apache-2.0 (/usr/share/common-licenses/Apache-2.0).
EOF

# The shared libraries the module links, as Debian's own tooling states them.
mkdir -p "$stage/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$package" "$package" >"$stage/debian/control"
libraries=$(cd "$stage" && dpkg-shlibdeps -O -e"root/usr/lib/nginx/modules/ngx_http_inwasm_module.so" 2>"$stage/shlibdeps.log") ||
  { cat "$stage/shlibdeps.log" >&2; echo "deb: dpkg-shlibdeps failed" >&2; exit 1; }
libraries=${libraries#shlibs:Depends=}

cat >"$root/DEBIAN/control" <<EOF
Package: $package
Version: $version
Architecture: $arch
Maintainer: inwasm developers <inwasm@localhost>
Section: httpd
Priority: optional
Depends: $abi, $libraries
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Description: proxy-wasm filters in nginx, on wasmtime (inwasm)
 The inwasm nginx module runs proxy-wasm filters (Rust, Go, AssemblyScript and C++ SDKs)
 inside nginx, compiled once at configuration time and run per request under deadlines,
 memory limits and a sandbox: the wasm {} block and the proxy_wasm directive.
EOF

cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if [ ! -e /etc/nginx/modules-enabled/50-mod-http-inwasm.conf ]; then
        mkdir -p /etc/nginx/modules-enabled
        ln -s /usr/share/nginx/modules-available/mod-http-inwasm.conf \
            /etc/nginx/modules-enabled/50-mod-http-inwasm.conf
    fi
    # The default compiled-code cache (beside nginx's body temp directory).
    install -d -o www-data -g www-data -m 0750 /var/lib/nginx/wasm_cache
fi
EOF

cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
case "$1" in
    remove|purge)
        rm -f /etc/nginx/modules-enabled/50-mod-http-inwasm.conf
        ;;
esac
if [ "$1" = purge ]; then
    rm -rf /var/lib/nginx/wasm_cache
fi
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

out=build/${package}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "deb: $out (depends on $abi)"
