#!/usr/bin/env bash
# Builds every example policy as a WebAssembly component and publishes it as
# plugins/<name>.wasm. Runnable from any directory; extra arguments go to
# `cargo build` (e.g. --offline, --locked).
set -euo pipefail

plugins_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$plugins_dir/build-workspace.sh" "$plugins_dir" cachet-plugin- \
    standard static-assets api-gateway vcl-port -- "$@"
