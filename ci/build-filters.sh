#!/usr/bin/env bash
# Builds every proxy-wasm filter crate of the workspace (host/tests/filters/*,
# examples/*/filter) to wasm32-wasip1 and copies the modules to
# build/filters/<crate_name>.wasm, and every AssemblyScript example (examples/*/asconfig.json)
# to build/filters/example_<dir>.wasm. Quiet and fast when nothing changed. With crate names
# as arguments, builds only those.
#
# Uses rustup's wasm32-wasip1 target when it is installed; otherwise Debian's rustc/cargo
# (packages rustc-web cargo-web rust-web-src lld wasi-libc, see ci/setup.sh) with
# -Z build-std, since rustup here has no wasm std.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-wasip1
TARGET_DIR=target/wasm
OUT_DIR=build/filters

crates=("$@")
only_named=${#crates[@]}
if [ "$only_named" -eq 0 ]; then
  for manifest in host/tests/filters/*/Cargo.toml examples/*/filter/Cargo.toml; do
    [ -f "$manifest" ] || continue
    crates+=("$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$manifest" | head -n1)")
  done
fi
if [ ${#crates[@]} -eq 0 ]; then
  echo "build-filters: no filter crates found" >&2
  exit 1
fi

# Whatever an enclosing cargo or shell set must not leak into this build.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET CARGO_TARGET_DIR RUSTC_WRAPPER
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  cargo=(cargo build)
else
  for tool in /usr/bin/rustc /usr/bin/cargo /usr/bin/wasm-ld /usr/lib/wasm32-wasi/libc.a; do
    if [ ! -e "$tool" ]; then
      echo "build-filters: $tool missing and rustup has no $TARGET target; run ci/setup.sh" >&2
      exit 1
    fi
  done
  # By full path: ~/.cargo/bin/rustc (rustup, no wasm std) must not be picked up.
  export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
  export RUSTFLAGS="-C linker=/usr/bin/wasm-ld -C link-self-contained=no -L /usr/lib/wasm32-wasi"
  cargo=(/usr/bin/cargo build -Z build-std=std,panic_abort)
fi

"${cargo[@]}" --quiet --locked --profile wasm --target "$TARGET" --target-dir "$TARGET_DIR" \
  "${crates[@]/#/--package=}"

mkdir -p "$OUT_DIR"
for crate in "${crates[@]}"; do
  name=${crate//-/_}
  built=$TARGET_DIR/$TARGET/wasm/$name.wasm
  out=$OUT_DIR/$name.wasm
  # Replace only what changed (mtimes stay meaningful), atomically (readers never see half).
  if ! cmp -s "$built" "$out"; then
    cp "$built" "$out.tmp.$$"
    mv -f "$out.tmp.$$" "$out"
  fi
done

# Crates named on the command line: only those (the demo needs one filter).
[ "$only_named" -eq 0 ] || exit 0

# AssemblyScript examples: `npm ci` into the example's own node_modules (when the lock file
# changed), then its `npm run build` into a temporary file; skipped when the module is newer
# than every source.
for asconfig in examples/*/asconfig.json; do
  [ -f "$asconfig" ] || continue
  dir=$(dirname "$asconfig")
  out=$OUT_DIR/example_$(basename "$dir").wasm
  sources=("$dir/package.json" "$dir/package-lock.json" "$asconfig" "$dir/assembly")
  if [ -f "$out" ] && [ -z "$(find "${sources[@]}" -newer "$out" -print -quit)" ]; then
    continue
  fi
  if ! command -v npm >/dev/null; then
    echo "build-filters: npm missing (needed for $dir); run ci/setup.sh" >&2
    exit 1
  fi
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
  fi
  tmp=$PWD/$out.tmp.$$
  log=$(mktemp)
  if ! (cd "$dir" && npm run --silent build -- -b "$tmp") >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log" "$tmp"
    echo "build-filters: $dir failed to build" >&2
    exit 1
  fi
  rm -f "$log"
  mv -f "$tmp" "$out"
done
