#!/usr/bin/env bash
# What one cache hit costs in instructions, per mode: cachet runs under valgrind's callgrind,
# which counts every instruction the process executes in user space (not the kernel's) and
# simulates its caches. The counts are the same from run to run whatever else the machine
# does, so they tell apart changes of 1 % that wall-clock benchmarks on a noisy machine
# cannot (ab.sh). What they leave out: the kernel's share of a hit (about half of it on
# loopback), real cache and TLB behaviour, contention between workers.
#
#   bash tests/bench/instructions.sh                      # builtin, fresh and reuse
#   INSTR_MODES="fresh" INSTR_TOP=30 bash tests/bench/instructions.sh
#   INSTR_PLUGIN=/tmp/other.wasm INSTR_MODES=fresh bash tests/bench/instructions.sh
#
# Each mode: one cachet (1 worker thread) in front of the origin, its 1000 objects filled,
# INSTR_WARM hits (default 1000), then INSTR_HITS hits (default 1000) counted, one after
# another on one keep-alive connection (keepalive_hits.py). Prints per hit: instructions,
# simulated L1 instruction and data misses and misses of a 1 MiB L2 (the benchmark machine's
# per core), and the ratio of instructions to the builtin mode's. INSTR_TOP=N adds, per
# plugin mode, the N functions whose own instructions per hit differ most from the builtin
# mode's (compiled plugin code named as wasmtime's perf map names it). INSTR_KEEP=1 keeps
# the callgrind files (callgrind_annotate reads them).
# Environment: CACHET (default target/release/cachet; a release build with line tables, as
# the repository's profile builds it), INSTR_PLUGIN (default plugins/standard.wasm).
# Needs valgrind, curl and python3.
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/../.." && pwd)"
cachet="${CACHET:-$repo_root/target/release/cachet}"
plugin_wasm="${INSTR_PLUGIN:-$repo_root/plugins/standard.wasm}"
modes="${INSTR_MODES:-builtin fresh reuse}"
hits="${INSTR_HITS:-1000}"
warm="${INSTR_WARM:-1000}"
top="${INSTR_TOP:-0}"
for tool in valgrind callgrind_annotate callgrind_control curl python3; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is not installed (Debian package valgrind)" >&2; exit 1; }
done
[[ -x "$cachet" ]] || { echo "instructions.sh: $cachet is not an executable (build it first)" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/cachet-instr.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "${INSTR_KEEP:-0}" == 1 ]]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

source "$bench_dir/lib.sh"

origin_port="$(free_port)"
start_origin "$origin_port" 1024 "$work/origin.log"
pids+=($!)

# The simulated caches: the benchmark machine's L1s, and its 1 MiB per-core L2 as the last
# level (callgrind simulates two levels).
cache_sim=(--cache-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=1048576,16,64)

# measure MODE: callgrind's file of INSTR_HITS hits in $work/MODE/counted.
measure() {
    local mode="$1" dir="$work/$1" plugin reuse port admin_port valgrind_pid
    case "$mode" in
        fresh) plugin="$plugin_wasm"; reuse=1 ;;
        reuse) plugin="$plugin_wasm"; reuse=1000000 ;;
        builtin) plugin="builtin:standard"; reuse=1 ;;
        *) echo "instructions.sh: a mode is builtin, fresh or reuse, not $mode" >&2; exit 1 ;;
    esac
    mkdir -p "$dir"
    port="$(free_port)"
    admin_port="$(free_port)"
    write_config "$dir/cachet.toml" "$port" "$admin_port" 1 "" 'max_bytes = "64MiB"' \
        "$origin_port" "$plugin" "$reuse"
    # A hook runs ~50 times slower under valgrind than its deadline allows.
    echo "hook_timeout_ms = 10000" >>"$dir/cachet.toml"
    # Compiled once at full speed into the artifact cache, so valgrind's run loads it.
    start_cachet "$cachet" "$dir/cachet.toml" "$admin_port"
    kill "$CACHET_PID"
    wait "$CACHET_PID" 2>/dev/null || true
    # A pool of 4 slots: the default reserves more address space than valgrind manages.
    # The code stays on 4 KiB pages, where valgrind reads it.
    CACHET_INSTANCE_SLOTS=4 CACHET_HUGE_TEXT=0 CACHET_PERF_MAP=1 \
        valgrind --tool=callgrind "${cache_sim[@]}" --instr-atstart=no \
        --callgrind-out-file="$dir/callgrind.%p" \
        "$cachet" serve --config "$dir/cachet.toml" </dev/null >/dev/null 2>"$dir/valgrind.log" &
    valgrind_pid=$!
    pids+=("$valgrind_pid")
    for _ in $(seq 600); do
        curl -fso /dev/null "http://127.0.0.1:$admin_port/status" && break
        kill -0 "$valgrind_pid" 2>/dev/null || { echo "instructions.sh: cachet under valgrind ended: $(tail -n 3 "$dir/valgrind.log")" >&2; exit 1; }
        sleep 0.5
    done
    fill "http://127.0.0.1:$port/" "" "$dir"
    python3 "$bench_dir/keepalive_hits.py" "$port" 0 "$warm" >/dev/null
    callgrind_control --instr=on "$valgrind_pid" >/dev/null
    python3 "$bench_dir/keepalive_hits.py" "$port" 0 "$hits" >/dev/null
    callgrind_control --dump=counted "$valgrind_pid" >/dev/null
    callgrind_control --instr=off "$valgrind_pid" >/dev/null
    mv "$(ls "$dir"/callgrind.*.* | head -n 1)" "$dir/counted"
    cp "/tmp/perf-$valgrind_pid.map" "$dir/perf.map" 2>/dev/null || : >"$dir/perf.map"
    rm -f "/tmp/perf-$valgrind_pid.map"
    kill "$valgrind_pid"
    wait "$valgrind_pid" 2>/dev/null || true
}

for mode in $modes; do
    echo "[instructions $(date +%H:%M:%S)] $mode: $warm hits to warm, $hits counted" >&2
    measure "$mode"
done

python3 - "$work" "$hits" "$top" $modes <<'EOF'
import bisect, re, subprocess, sys

work, hits, top, modes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
EVENTS = ["Ir", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw"]

def perf_map(mode):
    entries = []
    for line in open(f"{work}/{mode}/perf.map"):
        address, size, name = line.rstrip("\n").split(" ", 2)
        entries.append((int(address, 16), int(size, 16), name))
    return sorted(entries)

def annotate(mode):
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          f"--show={','.join(EVENTS)}", f"{work}/{mode}/counted"],
                         capture_output=True, text=True, check=True).stdout
    jit = perf_map(mode)
    starts = [e[0] for e in jit]
    totals, functions = None, {}
    # A count, or "." for none.
    number = r"([0-9,]+|\.)(?: \([ 0-9.]+%\))?\s+"
    row = re.compile(r"^\s*" + number * len(EVENTS) + r"(.*)$")
    for line in out.splitlines():
        m = row.match(line)
        if not m:
            continue
        counts = [int(m.group(i + 1).replace(",", "").replace(".", "0")) for i in range(len(EVENTS))]
        name = m.group(len(EVENTS) + 1)
        if "PROGRAM TOTALS" in name:
            totals = counts
            continue
        name = re.sub(r"\s*\[[^\]]*\]$", "", name)
        name = re.sub(r"^.*?\.(rs|c|S|h):", "", name)
        jitted = re.match(r"^\?\?\?:0x([0-9a-f]+)", name)
        if jitted:
            address = int(jitted.group(1), 16)
            i = bisect.bisect_right(starts, address) - 1
            if i >= 0 and address < jit[i][0] + jit[i][1]:
                name = "plugin code: " + jit[i][2]
        functions[name] = functions.get(name, 0) + counts[0]
    return totals, functions

results = {mode: annotate(mode) for mode in modes}
print(f"# {hits} hits of 1 KiB on one keep-alive connection, 1 worker, user-space instructions "
      f"(callgrind); misses of simulated caches (L1i 32 KiB, L1d 48 KiB, L2 1 MiB), per hit")
print("| mode | instructions | × builtin | L1i misses | L1d misses | L2 misses |")
print("|---|---:|---:|---:|---:|---:|")
base = results.get("builtin", (None,))[0]
for mode in modes:
    t = results[mode][0]
    ratio = f"{t[0] / base[0]:.3f}" if base else "—"
    print(f"| {mode} | {t[0] / hits:,.0f} | {ratio} | {t[1] / hits:,.0f} | "
          f"{(t[2] + t[3]) / hits:,.0f} | {(t[4] + t[5] + t[6]) / hits:,.0f} |")
if top > 0 and base:
    builtin = results["builtin"][1]
    for mode in modes:
        if mode == "builtin":
            continue
        own = results[mode][1]
        rows = sorted(((own.get(k, 0) - builtin.get(k, 0)) / hits, k) for k in set(own) | set(builtin))
        print(f"\n{mode}: the {top} functions whose own instructions per hit grew most over builtin")
        for delta, name in rows[::-1][:top]:
            print(f"{delta:9,.0f}  {name[:150]}")
EOF
