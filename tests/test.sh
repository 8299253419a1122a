#!/usr/bin/env bash
# Runs every check: formatting, clippy, the plugins' native unit tests, the SDK
# and host unit tests, and the end-to-end tests (real origin, real client, real
# .wasm). Installs what a fresh machine lacks first (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --lint
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Every build below uses the workspace's feature set: `-p cachet` (or `cargo
# run -p cachet` in the plugin scripts) resolves features differently and
# would compile pingora and wasmtime a second time.
cargo test --workspace --no-run
export CACHET="${CARGO_TARGET_DIR:-$PWD/target}/debug/cachet"
bash plugins/build.sh
cargo test --manifest-path plugins/Cargo.toml
cargo test --manifest-path tests/fixtures/plugins/Cargo.toml
# The Python example: its native unit tests, then the component.
bash plugins/static-assets-py/build.sh
cargo test --workspace
# The RFC 9111/9110 suites and the tier suites once more with every hit on
# pingora-cache's full path (`[cache] lean_hits = false`): both hit paths must
# behave alike, from memory and from the disk and shared tiers, and under damaged requests.
CACHET_TEST_LEAN_HITS=off cargo test --workspace --test http_caching --test http_semantics --test poisoning_matrix \
    --test disk_tier --test shared_tier --test large_objects --test mutated_requests
