#!/usr/bin/env bash
# Where a cache hit's CPU goes: runs the release cachet under wrk on loopback
# (1 KiB hits over 1000 URLs, every entry warm), samples it with `perf record`,
# and prints the CPU per request split by layer (kernel, Pingora, cachet,
# wasmtime runtime, plugin code, allocator/libc, the rest) with the hottest
# symbols of each. A command, not a test:
#
#   bash tests/bench/profile.sh                # default mode: fresh instance per request
#   PROFILE_MODE=reuse bash tests/bench/profile.sh
#   PROFILE_MODE=builtin bash tests/bench/profile.sh
#   PROFILE_MODE=builtin PROFILE_TIER=shared bash tests/bench/profile.sh   # shared-tier hits
#   PROFILE_MODE=builtin PROFILE_TLS=1 bash tests/bench/profile.sh         # hits over HTTPS
#   PROFILE_MODE=builtin PROFILE_H2=1 bash tests/bench/profile.sh          # over HTTP/2 (h2load)
#
# Environment: PROFILE_MODE=fresh|reuse|builtin, PROFILE_SECONDS=10,
# PROFILE_CONNECTIONS=64, PROFILE_THREADS=2 (cachet worker threads),
# PROFILE_PLUGIN=path.wasm (instead of plugins/standard.wasm),
# PROFILE_CALL_GRAPH=fp (dwarf: callers through code built without frame pointers, for
# `perf report -G` on the kept perf.data; heavier, so CPU per request reads higher),
# PROFILE_HUGE_TEXT=1 (sampled runs keep the code on the binary's 4 KiB file pages, where perf
# can name its functions, unless this is set; runs with PROFILE_SAMPLE=0 always measure the
# code on 2 MiB pages, as cachet runs by default), PROFILE_ACCESS_LOG=1 (0 turns the access
# log off), PROFILE_WORK_STEALING=1 (0: one
# runtime per worker thread, `[server] work_stealing = false`), PROFILE_LEAN_HITS=1 (0: every hit
# on pingora-cache's full path), PROFILE_NO_BUILD=1 (use the
# existing target/release/cachet and plugins), PROFILE_METRICS=1 (also print the front's,
# lean path's and plugin's counters after the load), PROFILE_SYSCALLS=1 (also count system
# calls per request by name, with the kernel's syscall tracepoints, during a 3 s load of their
# own), PROFILE_ALLOCS=1 (also count heap
# allocations per request with uprobes on the allocator, during a 3 s load of their own), PROFILE_SAMPLE=0 (no perf: CPU per request
# only, without the sampler's own cost, for side-by-side runs of two builds), PROFILE_CACHET=path (profile that binary instead of
# target/release/cachet, e.g. to compare two builds; implies PROFILE_NO_BUILD), PROFILE_KEEP=1 (keep the folder),
# PROFILE_TIER=disk|shared (a 64 KiB memory cache in front of a disk tier, or of
# a redis-server started here on loopback, so nearly every hit is an L2 hit),
# PROFILE_SIZE=1k|64k (the body size; with a tier, 64k hits get a 1 MiB memory cache: the
# smallest that still stores a 64 KiB object), PROFILE_TLS=1 (the measured hits go over HTTPS, keep-alive, to a tls_listen
# with an ECDSA P-256 certificate made here by openssl), PROFILE_H2=1 (over HTTPS with
# ALPN h2: h2load, CONNECTIONS/4 connections × 4 streams; no p99, h2load gives none
# without its per-request log).
# Needs perf (linux-perf), wrk and python3. The machine's hardware counters are
# not required: sampling uses the cpu-clock software event.
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/../.." && pwd)"
mode="${PROFILE_MODE:-fresh}"
seconds="${PROFILE_SECONDS:-10}"
connections="${PROFILE_CONNECTIONS:-64}"
threads="${PROFILE_THREADS:-2}"
access_log="${PROFILE_ACCESS_LOG:-1}"
tier="${PROFILE_TIER:-}"
size="${PROFILE_SIZE:-1k}"
case "$size" in
    1k) body_bytes=1024; tier_memory="64KiB" ;;
    64k) body_bytes=65536; tier_memory="1MiB" ;;
    *) echo "profile.sh: PROFILE_SIZE must be 1k or 64k" >&2; exit 1 ;;
esac

h2="${PROFILE_H2:-0}"
load_tool=wrk
if [[ "$h2" == 1 ]]; then
    PROFILE_TLS=1
    load_tool=h2load
fi

for tool in perf "$load_tool" python3; do
    command -v "$tool" >/dev/null || { echo "profile.sh: $tool is not installed" >&2; exit 1; }
done
wasm="${PROFILE_PLUGIN:-$repo_root/plugins/standard.wasm}"
case "$mode" in
    fresh) plugin="$wasm"; reuse=1 ;;
    reuse) plugin="$wasm"; reuse=1000000 ;;
    builtin) plugin="builtin:standard"; reuse=1 ;;
    *) echo "profile.sh: PROFILE_MODE must be fresh, reuse or builtin" >&2; exit 1 ;;
esac
case "$tier" in
    "" | disk) ;;
    shared)
        for tool in redis-server redis-cli; do
            command -v "$tool" >/dev/null || { echo "profile.sh: $tool is not installed (Debian package redis-server)" >&2; exit 1; }
        done
        ;;
    *) echo "profile.sh: PROFILE_TIER must be disk or shared" >&2; exit 1 ;;
esac
cachet_bin="${PROFILE_CACHET:-$repo_root/target/release/cachet}"
if [[ "${PROFILE_NO_BUILD:-0}" != 1 && -z "${PROFILE_CACHET:-}" ]]; then
    (cd "$repo_root" && cargo build --release -p cachet) >&2
    [[ "$mode" == builtin ]] || CACHET="$repo_root/target/release/cachet" bash "$repo_root/plugins/build.sh" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/cachet-profile.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ "${PROFILE_KEEP:-0}" == 1 ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

source "$bench_dir/lib.sh"

# The origin: PROFILE_SIZE bodies, cacheable for an hour; only the warm-up reaches it.
origin_port="$(free_port)"
start_origin "$origin_port" "$body_bytes" "$work/origin.log"
pids+=($!)

# The L2 tier, if any: the memory cache shrinks (64 KiB, 1 MiB for 64k bodies) so hits come
# from it.
memory_bytes="512MiB"
tier_config=""
case "$tier" in
    disk)
        memory_bytes="$tier_memory"
        tier_config="[cache.disk]
path = \"$work/disk\"
max_bytes = \"256MiB\""
        ;;
    shared)
        memory_bytes="$tier_memory"
        redis_port="$(free_port)"
        redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
            >"$work/redis.log" 2>&1 &
        pids+=($!)
        redis_up=0
        for _ in $(seq 50); do
            redis-cli -p "$redis_port" ping >/dev/null 2>&1 && { redis_up=1; break; }
            sleep 0.1
        done
        # Without it every hit would quietly come from the origin, not the shared tier.
        ((redis_up)) || { echo "profile.sh: redis-server did not answer: $(tail -n 1 "$work/redis.log")" >&2; exit 1; }
        tier_config="[cache.shared]
url = \"redis://127.0.0.1:$redis_port\""
        ;;
esac

tls_config=""
tls_target=""
if [[ "${PROFILE_TLS:-0}" == 1 ]]; then
    command -v openssl >/dev/null || { echo "profile.sh: openssl is not installed" >&2; exit 1; }
    make_certificate "$work"
    tls_port="$(free_port)"
    tls_config="$(tls_lines "$tls_port" "$work")"
    tls_target="https://127.0.0.1:$tls_port/"
fi

port="$(free_port)"
admin_port="$(free_port)"
server_lines="access_log = $([[ "$access_log" == 1 ]] && echo true || echo false)
work_stealing = $([[ "${PROFILE_WORK_STEALING:-1}" == 1 ]] && echo true || echo false)
$tls_config"
cache_lines="max_bytes = \"$memory_bytes\"
lean_hits = $([[ "${PROFILE_LEAN_HITS:-1}" == 1 ]] && echo true || echo false)

$tier_config"
write_config "$work/cachet.toml" "$port" "$admin_port" "$threads" "$server_lines" \
    "$cache_lines" "$origin_port" "$plugin" "$reuse"
# perf names functions by their file mapping: code cachet moved onto 2 MiB pages is anonymous
# to it, so a sampled run keeps the code where the file maps it (PROFILE_HUGE_TEXT=1 keeps
# the move, for CPU figures only). A run without perf measures the binary as it runs.
if [[ "${PROFILE_SAMPLE:-1}" == 1 && "${PROFILE_HUGE_TEXT:-0}" != 1 ]]; then
    export CACHET_HUGE_TEXT=0
fi
start_cachet "$cachet_bin" "$work/cachet.toml" "$admin_port" || exit 1
cachet_pid=$CACHET_PID

write_paths_lua "$work/paths.lua" "/$size"
# Fill every entry, then a warm-up under load.
fill "http://127.0.0.1:$port/" "/$size" "$work"
target="${tls_target:-http://127.0.0.1:$port/}"
list_urls "$target" "/$size" "$work/h2-urls"
# load SECONDS OUT: the measured load, wrk over HTTP/1.1 or h2load over HTTP/2.
load() {
    if [[ "$h2" == 1 ]]; then
        h2load -t2 -c"$((connections / 4))" -m4 -D"$1" -i "$work/h2-urls" >"$2" 2>&1
    else
        wrk -t2 -c"$connections" -d"${1}s" -s "$work/paths.lua" "$target" >"$2"
    fi
}
load 2 /dev/null

# One line per cachet thread: tid|name|CPU ticks|voluntary|involuntary context switches
# (lib.sh's thread_counters, with each thread's name).
threads_snapshot() {
    local tid counters
    thread_counters "$cachet_pid" | while read -r tid counters; do
        printf '%s|%s|%s\n' "$tid" "$(cat "/proc/$cachet_pid/task/$tid/comm" 2>/dev/null)" "${counters// /|}"
    done
}
# counted_load EVENTS NAME: counts the perf EVENTS of cachet over a 3 s load of their own into
# $work/NAME.csv, and prints the requests that load made.
counted_load() {
    perf stat -x, -e "$1" -p "$cachet_pid" -o "$work/$2.csv" -- sleep 60 &
    local stat_pid=$!
    sleep 0.5
    load 3 "$work/$2-load.out"
    kill -INT "$stat_pid" 2>/dev/null
    wait "$stat_pid" 2>/dev/null || true
    if [[ "$h2" == 1 ]]; then
        awk '/^requests:/ {print $8}' "$work/$2-load.out"
    else
        awk '/^REQUESTS/ {print $2}' "$work/$2-load.out"
    fi
}
# Heap allocations per request: uprobes on mimalloc's entry points (every Rust allocation
# goes through one of the three), counted over a 3 s load of its own after the measured one,
# since each probe hit costs a trap and would inflate the CPU figures.
count_allocations() {
    local group=cachet_alloc fn counts requests
    perf probe -q -d "$group:*" >/dev/null 2>&1 || true
    for fn in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
        if ! perf probe -q -x "$cachet_bin" -a "$group:$fn=$fn" >/dev/null 2>&1; then
            echo "allocations: no uprobe on $fn in $cachet_bin (needs root and the binary's symbols)"
            perf probe -q -d "$group:*" >/dev/null 2>&1 || true
            return 0
        fi
    done
    requests="$(counted_load "$group:*" allocs)"
    perf probe -q -d "$group:*" >/dev/null 2>&1 || true
    echo "## heap allocations per request (uprobes, a 3 s load of its own)"
    awk -F, -v n="$requests" '/cachet_alloc:/ { sub(/.*:/, "", $3); total += $1
        printf "    %-20s %.2f\n", $3, $1 / n } END { printf "    %-20s %.2f\n", "all", total / n }' \
        "$work/allocs.csv"
}
# System calls per request by name: the kernel's syscall tracepoints counted over a 3 s load
# of its own (counting costs a little per call, so not during the measured load).
count_syscalls() {
    local requests
    requests="$(counted_load 'syscalls:sys_enter_*' syscalls)"
    if ! grep -q 'sys_enter_' "$work/syscalls.csv" 2>/dev/null; then
        echo "system calls: no syscall tracepoints (needs root or perf_event_paranoid <= -1)"
        return 0
    fi
    echo "## system calls per request (syscall tracepoints, a 3 s load of their own)"
    awk -F, -v n="$requests" '/sys_enter_/ && $1 + 0 > 0 { sub(/.*sys_enter_/, "", $3)
        total += $1; printf "    %-20s %.3f\n", $3, $1 / n }
        END { printf "    %-20s %.3f\n", "all", total / n }' "$work/syscalls.csv" | sort -k2 -rn
}
sample="${PROFILE_SAMPLE:-1}"
threads_snapshot >"$work/threads.before"
ticks_before="$(process_cpu_ticks "$cachet_pid")"
if [[ "$sample" == 1 ]]; then
    perf record -q -F 999 --call-graph "${PROFILE_CALL_GRAPH:-fp}" -p "$cachet_pid" -o "$work/perf.data" -- sleep "$((seconds + 1))" 2>/dev/null &
    perf_pid=$!
    sleep 0.5
fi
load "$seconds" "$work/load.out"
[[ "$sample" == 1 ]] && { wait "$perf_pid" || true; }
ticks_after="$(process_cpu_ticks "$cachet_pid")"
threads_snapshot >"$work/threads.after"
if [[ "${PROFILE_METRICS:-0}" == 1 ]]; then
    curl -fs "http://127.0.0.1:$admin_port/metrics" >"$work/metrics.after" || true
fi
if [[ "$h2" == 1 ]]; then
    requests="$(awk '/^requests:/ {print $8}' "$work/load.out")"
    p99="n/a"
else
    requests="$(awk '/^REQUESTS/ {print $2}' "$work/load.out")"
    p99="$(awk '/^P99_US/ {print $2}' "$work/load.out")"
fi
hz="$(getconf CLK_TCK)"
cpu_us="$(python3 -c "print(f'{($ticks_after - $ticks_before) / $hz * 1e6 / $requests:.1f}')")"
echo "# cachet hit profile: $size bodies, mode $mode${tier:+, L2 $tier tier}${tls_target:+, HTTPS}$([[ "$h2" == 1 ]] && echo ", HTTP/2"), $connections connections, ${seconds}s, access log $access_log"
echo "requests: $requests ($((requests / seconds)) req/s), p99 ${p99} µs, cachet CPU ${cpu_us} µs/request (utime+stime)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# Which threads ran and how often they slept or were preempted: a wake-up costs scheduler
# time on both sides, which the profile below charges to the kernel, not to its cause.
python3 "$bench_dir/profile_threads.py" "$work/threads.before" "$work/threads.after" \
    "$requests" "$hz"
if [[ "${PROFILE_METRICS:-0}" == 1 ]]; then
    echo
    echo "## cachet's counters after the load (warm-up included)"
    grep -E '^cachet_(front_|lean_|cache_(hits|misses|lookups)|plugin_(hook_seconds_count|instances))' \
        "$work/metrics.after" || true
fi
if [[ "${PROFILE_SYSCALLS:-0}" == 1 ]]; then
    echo
    count_syscalls
fi
if [[ "${PROFILE_ALLOCS:-0}" == 1 ]]; then
    echo
    count_allocations
fi
[[ "$sample" == 1 ]] || exit 0

# Self time per symbol, then by layer: every sample is charged to the function
# it was in, so the layers add up to the process's whole CPU.
perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio -q -g none \
    --field-separator='|' 2>/dev/null |
    python3 "$bench_dir/profile_layers.py" "$cpu_us"
