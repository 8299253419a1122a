#!/usr/bin/env bash
# Installs what building and testing cachet needs and a fresh machine lacks, or stops with one
# line saying exactly what to install. Used by tests/test.sh and examples/demo.sh (and so by
# CI). Usage: bash scripts/install-deps.sh [--lint | --run]
#   --lint: also rustfmt and clippy
#   --run:  only what building and running the proxy needs (no redis-server: on Debian its
#           package starts a system service the demo does not use)
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools: "command debian-package". Add a line to need one more.
SYSTEM_TOOLS=(
  "cmake cmake"           # builds libz-ng-sys, pulled in by pingora-core
  "pkg-config pkg-config" # lets -sys crates find system libraries
)
[ "${1:-}" = "--run" ] ||
  SYSTEM_TOOLS+=("redis-server redis-server") # the shared cache tier's tests run a real Redis
# Policies build for wasm32-unknown-unknown (no WASI); the test fixtures for wasm32-wasip2.
WASM_TARGETS=(wasm32-unknown-unknown wasm32-wasip2)

fail() {
  echo "cachet setup: $*" >&2
  exit 1
}

# The minimum Rust version, as the workspace declares it.
min_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)

command -v cargo >/dev/null && command -v rustup >/dev/null ||
  fail "install Rust $min_rust or newer with rustup (https://rustup.rs), then run this again"

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
rust_version=$(rustc --version | awk '{print $2}')
version_ge "${rust_version%%-*}" "$min_rust" ||
  fail "rustc $rust_version is older than the $min_rust cachet needs: run 'rustup update stable'"

missing=()
for entry in "${SYSTEM_TOOLS[@]}"; do
  read -r tool package <<<"$entry"
  command -v "$tool" >/dev/null || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null && sudo="sudo" ||
      fail "install ${missing[*]} (Debian/Ubuntu: apt-get install -y ${missing[*]}, as root)"
  fi
  command -v apt-get >/dev/null ||
    fail "install ${missing[*]} with your system's package manager, then run this again"
  echo "cachet setup: installing ${missing[*]} with apt-get" >&2
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; } >&2 ||
    fail "could not install ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}'"
fi

for target in "${WASM_TARGETS[@]}"; do
  rustup target list --installed 2>/dev/null | grep -qx "$target" ||
    rustup target add "$target" >&2 ||
    fail "could not add the $target target: run 'rustup target add $target'"
done

if [ "${1:-}" = "--lint" ]; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$component" ||
      rustup component add "$component" >&2 ||
      fail "could not add $component: run 'rustup component add $component'"
  done
fi
