#!/usr/bin/env bash
# Runs every test: the plugins' native unit tests, the SDK and host unit
# tests, and the end-to-end tests (real origin, real client, real .wasm).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash plugins/build.sh
cargo test --manifest-path plugins/Cargo.toml
cargo test --manifest-path tests/fixtures/plugins/Cargo.toml
cargo test --workspace
