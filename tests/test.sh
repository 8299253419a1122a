#!/usr/bin/env bash
# Runs every check: formatting, clippy, the plugins' native unit tests, the SDK
# and host unit tests, and the end-to-end tests (real origin, real client, real
# .wasm). Installs what a fresh machine lacks first (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --lint
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
bash plugins/build.sh
cargo test --manifest-path plugins/Cargo.toml
cargo test --manifest-path tests/fixtures/plugins/Cargo.toml
cargo test --workspace
# The RFC 9111/9110 suites once more with every hit on pingora-cache's full path
# (`[cache] lean_hits = false`): both hit paths must behave alike.
CACHET_TEST_LEAN_HITS=off cargo test -p cachet --test http_caching --test http_semantics
