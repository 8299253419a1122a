#!/usr/bin/env bash
# Builds the example plugins and cachet, then runs cachet on 127.0.0.1:8080 in
# front of its built-in demo origin (127.0.0.1:8000). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
command -v cmake >/dev/null || { echo "cachet needs cmake to build (Debian: apt-get install cmake)" >&2; exit 1; }
bash plugins/build.sh
exec cargo run --release -p cachet -- serve --config examples/cachet.toml --demo-origin 127.0.0.1:8000
