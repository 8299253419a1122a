#!/usr/bin/env bash
# Builds a workspace of policy crates as WebAssembly components and publishes
# each as <workspace>/<name>.wasm. Shared by plugins/build.sh and
# tests/fixtures/plugins/build.sh.
#
# usage: build-workspace.sh WORKSPACE_DIR CRATE_PREFIX NAME... [-- CARGO_ARGS...]
#   the crate for NAME is CRATE_PREFIX + NAME (dashes become underscores in the artifact)
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

# From inside the workspace, so that its .cargo/config.toml (if any) applies.
(cd "$workspace_dir" && cargo build --release --target wasm32-wasip2 \
    --manifest-path "$workspace_dir/Cargo.toml" \
    --target-dir "$target_dir" \
    "$@")

# Copy under a temporary name in the destination directory, then rename: a
# rename within one filesystem is atomic, so a concurrent reader sees either
# the old component or the new one, never a partial file.
for name in "${names[@]}"; do
    crate="$prefix$name"
    artifact="$target_dir/wasm32-wasip2/release/${crate//-/_}.wasm"
    destination="$workspace_dir/$name.wasm"
    staging="$(mktemp "$workspace_dir/.$name.wasm.XXXXXX")"
    trap 'rm -f "$staging"' EXIT
    cp "$artifact" "$staging"
    chmod 0644 "$staging"
    mv -f "$staging" "$destination"
    trap - EXIT
    echo "built $destination ($(wc -c <"$destination") bytes)"
done
