#!/usr/bin/env bash
# Builds the Python policy as a WebAssembly component: runs its native unit
# tests, then componentize-py (installed at the pinned version into a virtual
# environment under plugins/target/) writes plugins/static-assets-py.wasm.
# Needs python3 (3.10 or newer) with venv; stops with one line otherwise.
set -euo pipefail

plugin_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugins_dir="$(dirname "$plugin_dir")"
repo_root="$(dirname "$plugins_dir")"
venv="${CARGO_TARGET_DIR:-$plugins_dir/target}/python-componentize"
destination="$plugins_dir/static-assets-py.wasm"

fail() {
    echo "static-assets-py: $*" >&2
    exit 1
}

command -v python3 >/dev/null || fail "install Python 3.10 or newer (Debian: apt-get install -y python3 python3-venv)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "Python $(python3 -c 'import platform; print(platform.python_version())') is older than the 3.10 componentize-py needs"

# The policy's own logic is plain Python: test it natively first.
tests="$(cd "$plugin_dir" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest test_static_assets 2>&1)" ||
    { echo "$tests" >&2; fail "unit tests failed"; }

pinned="$(sed -n 's/^componentize-py==//p' "$plugin_dir/requirements.txt")"
if [[ "$("$venv/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $pinned" ]]; then
    python3 -m venv --clear "$venv" >/dev/null 2>&1 ||
        fail "python3 cannot create a virtual environment (Debian: apt-get install -y python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$plugin_dir/requirements.txt" ||
        fail "could not install componentize-py $pinned from PyPI into $venv"
fi

# --stub-wasi: CPython imports files, sockets and clocks; a policy is granted
# none of them, so every WASI import becomes a trap and the component imports
# only cachet:policy. Written next to the destination, then renamed: a running
# proxy watching the file sees the old component or the new one, never half.
staging="$(mktemp "$plugins_dir/.static-assets-py.wasm.XXXXXX")"
trap 'rm -f "$staging"' EXIT
(cd "$plugin_dir" && "$venv/bin/componentize-py" \
    --wit-path "$repo_root/wit/v0.2" --world policy \
    componentize --stub-wasi --python-path "$plugin_dir" app --output "$staging" >/dev/null)
chmod 0644 "$staging"
mv -f "$staging" "$destination"
trap - EXIT
echo "built $destination ($(wc -c <"$destination") bytes)"
