#!/usr/bin/env bash
# Build the web app: the engine for wasm32 (crates/web), its JavaScript
# bindings (wasm-bindgen-cli, the exact version of the wasm-bindgen crate in
# Cargo.lock, installed from crates.io when missing), then the bundle (Vite,
# from the npm packages in package-lock.json) into web/dist, each file with
# a .gz beside it for the server to send. Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")"
root=..
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$root/Cargo.lock")
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "== wasm-bindgen-cli $want (crates.io)"
  # Not --locked: its own lock file names a webpki-roots the registry here lacks.
  cargo install wasm-bindgen-cli --version "$want" --quiet
fi
echo "== engine (wasm32)"
cargo build --locked --profile wasm --target wasm32-unknown-unknown -p sitrep-web --quiet
rm -rf src/pkg
wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir src/pkg "${CARGO_TARGET_DIR:-$root/target}/wasm32-unknown-unknown/wasm/sitrep_web.wasm"
echo "== bundle (npm ci, vite)"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
# The TypeScript and Svelte types, then the bundle.
npx svelte-check --tsconfig ./tsconfig.json --fail-on-warnings --output machine | tail -1
npx vite build --logLevel warn
find dist -type f ! -name '*.gz' -exec gzip -9 -k -f {} \;
echo "== web app in web/dist"
