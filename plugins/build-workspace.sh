#!/usr/bin/env bash
# Builds a workspace of policy crates as WebAssembly components and publishes
# each as <workspace>/<name>.wasm. Shared by plugins/build.sh and
# tests/fixtures/plugins/build.sh.
#
# usage: build-workspace.sh WORKSPACE_DIR CRATE_PREFIX NAME... [-- CARGO_ARGS...]
#   the crate for NAME is CRATE_PREFIX + NAME (dashes become underscores in the artifact)
#
# POLICY_TARGET=wasm32-unknown-unknown (the default) builds core modules and wraps each into a
# component with `cachet componentize`: no WASI imports, so a fresh instance per request is
# cheap. POLICY_TARGET=wasm32-wasip2 builds components directly (the test fixtures use it to
# prove such components keep loading). CACHET=path/to/cachet names the binary that wraps;
# otherwise `cargo run -p cachet` builds the one in this repository.
set -euo pipefail

workspace_dir="$(cd "$1" && pwd)"
prefix="$2"
shift 2
names=()
while (($#)) && [[ "$1" != "--" ]]; do
    names+=("$1")
    shift
done
[[ "${1:-}" == "--" ]] && shift
target_dir="${CARGO_TARGET_DIR:-$workspace_dir/target}"
target="${POLICY_TARGET:-wasm32-unknown-unknown}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# From inside the workspace, so that its .cargo/config.toml (if any) applies.
(cd "$workspace_dir" && cargo build --release --target "$target" \
    --manifest-path "$workspace_dir/Cargo.toml" \
    --target-dir "$target_dir" \
    "$@")

componentize() {
    if [[ -n "${CACHET:-}" ]]; then
        "$CACHET" componentize "$1" "$2"
    else
        cargo run --quiet --manifest-path "$repo_root/Cargo.toml" -p cachet --bin cachet -- \
            componentize "$1" "$2"
    fi
}

# Copy under a temporary name in the destination directory, then rename: a
# rename within one filesystem is atomic, so a concurrent reader sees either
# the old component or the new one, never a partial file.
for name in "${names[@]}"; do
    crate="$prefix$name"
    artifact="$target_dir/$target/release/${crate//-/_}.wasm"
    destination="$workspace_dir/$name.wasm"
    staging="$(mktemp "$workspace_dir/.$name.wasm.XXXXXX")"
    trap 'rm -f "$staging"' EXIT
    if [[ "$target" == wasm32-unknown-unknown ]]; then
        componentize "$artifact" "$staging"
    else
        cp "$artifact" "$staging"
    fi
    chmod 0644 "$staging"
    mv -f "$staging" "$destination"
    trap - EXIT
    echo "built $destination ($(wc -c <"$destination") bytes)"
done
