#!/usr/bin/env bash
# Builds the example plugins and cachet, then runs cachet on 127.0.0.1:8080 in
# front of its built-in demo origin (127.0.0.1:8000). Ctrl-C stops both.
# Installs what a fresh machine lacks to build and run it first (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --run
bash plugins/build.sh
exec cargo run --release -p cachet -- serve --config examples/cachet.toml --demo-origin 127.0.0.1:8000
