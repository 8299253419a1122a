#!/usr/bin/env bash
# Builds every example policy as a WebAssembly component and publishes it as
# plugins/<name>.wasm. Runnable from any directory; extra arguments go to
# `cargo build` (e.g. --offline, --locked).
set -euo pipefail

plugins_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target_dir="${CARGO_TARGET_DIR:-$plugins_dir/target}"
plugins=(standard static-assets api-gateway)

cargo build --release --target wasm32-wasip2 \
    --manifest-path "$plugins_dir/Cargo.toml" \
    --target-dir "$target_dir" \
    "$@"

# Copy under a temporary name in the destination directory, then rename: a
# rename within one filesystem is atomic, so a concurrent reader sees either
# the old component or the new one, never a partial file.
for name in "${plugins[@]}"; do
    artifact="$target_dir/wasm32-wasip2/release/cachet_plugin_${name//-/_}.wasm"
    destination="$plugins_dir/$name.wasm"
    staging="$(mktemp "$plugins_dir/.$name.wasm.XXXXXX")"
    trap 'rm -f "$staging"' EXIT
    cp "$artifact" "$staging"
    chmod 0644 "$staging"
    mv -f "$staging" "$destination"
    trap - EXIT
    echo "built $destination ($(wc -c <"$destination") bytes)"
done
