#!/usr/bin/env bash
# Two cachet setups, A and B, measured in alternation on the same warm cache hits: the
# way to tell a change of a few per cent on a machine whose speed drifts by more than
# that from one minute to the next. Both processes run the whole time (idle while the
# other is measured); each round measures A then B (B then A in every other round) for a
# few seconds each, so a slow phase of the machine lands on both sides of a round. Prints
# each round and then, per side, the median CPU per request with its range, and the
# median of the per-round ratios B ÷ A with the number of rounds B was cheaper.
#
#   AB_B_BIN=/tmp/cachet-new bash tests/bench/ab.sh           # two builds, default mode
#   AB_A_MODE=builtin AB_B_MODE=reuse bash tests/bench/ab.sh  # two modes, one build
#   AB_B_SERVER='work_stealing = false' AB_H2=1 bash tests/bench/ab.sh
#   AB_A_MODE=builtin AB_B_MODE=builtin AB_B_TIER=disk bash tests/bench/ab.sh  # an L2 hit's cost
#
# Environment: AB_A_BIN, AB_B_BIN (default target/release/cachet, which must exist),
# AB_A_MODE, AB_B_MODE (fresh|reuse|builtin, default fresh), AB_A_SERVER, AB_B_SERVER
# (extra lines for the `[server]` table), AB_PLUGIN (default plugins/standard.wasm), AB_A_PLUGIN,
# AB_B_PLUGIN (a side's own plugin, default AB_PLUGIN: two builds of one policy),
# AB_ROUNDS=10, AB_SECONDS=3 (per side per round), AB_CONNECTIONS=64, AB_THREADS=2
# (worker threads of each cachet), AB_H2=1 (HTTPS with ALPN h2 through h2load,
# CONNECTIONS/4 connections × 4 streams, instead of wrk over HTTP/1.1), AB_TLS=1 (wrk over
# HTTPS, keep-alive: HTTP/1.1 with the TLS the HTTP/2 runs have), AB_SIZE=1k|64k (the
# body size of the hits), AB_A_TIER, AB_B_TIER (disk|shared: a 64 KiB memory cache in front of
# a disk tier, or of a redis-server started here on loopback, so nearly every hit is an L2
# hit; the default is the memory cache alone, 512 MiB), AB_THREAD_DETAIL=1 (after each round,
# per side: the CPU ticks of its two busiest threads, and how often its threads slept and
# were preempted per 1000 requests: is a slow round an uneven share, more parking, or
# neither).
# The access log is on, beside each config, as a user first runs it.
# Needs wrk (or h2load and openssl with AB_H2=1), curl and python3.
set -euo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/../.." && pwd)"
rounds="${AB_ROUNDS:-10}"
seconds="${AB_SECONDS:-3}"
connections="${AB_CONNECTIONS:-64}"
threads="${AB_THREADS:-2}"
h2="${AB_H2:-0}"
tls="${AB_TLS:-$h2}"
plugin_wasm="${AB_PLUGIN:-$repo_root/plugins/standard.wasm}"
case "${AB_SIZE:-1k}" in
    1k) body_bytes=1024 ;;
    64k) body_bytes=65536 ;;
    *) echo "ab.sh: AB_SIZE must be 1k or 64k" >&2; exit 1 ;;
esac
load_tool=wrk
[[ "$h2" == 1 ]] && load_tool=h2load
for tool in "$load_tool" curl python3; do
    command -v "$tool" >/dev/null || { echo "ab.sh: $tool is not installed" >&2; exit 1; }
done
[[ "$tls" == 1 ]] && { command -v openssl >/dev/null || { echo "ab.sh: openssl is not installed" >&2; exit 1; }; }

work="$(mktemp -d "${TMPDIR:-/tmp}/cachet-ab.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

source "$bench_dir/lib.sh"

# The origin: AB_SIZE bodies, cacheable for an hour; only the fill reaches it.
origin_port="$(free_port)"
start_origin "$origin_port" "$body_bytes" "$work/origin.log"
pids+=($!)

[[ "$tls" == 1 ]] && make_certificate "$work"

# A redis-server for a side with the shared tier, on loopback, no persistence.
redis_port=""
start_redis() {
    [[ -n "$redis_port" ]] && return 0
    command -v redis-server >/dev/null || { echo "ab.sh: redis-server is not installed (Debian package redis-server)" >&2; exit 1; }
    redis_port="$(free_port)"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no >"$work/redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "ab.sh: redis-server did not start: $(tail -n 3 "$work/redis.log")" >&2
    exit 1
}

# The `[cache]` lines of a side: the memory cache alone, or a small one in front of a tier.
cache_lines() {
    local side="$1" tier="$2"
    case "$tier" in
        "") echo 'max_bytes = "512MiB"' ;;
        disk) printf 'max_bytes = "64KiB"\n\n[cache.disk]\npath = "%s"\nmax_bytes = "256MiB"\n' \
            "$work/$side/disk" ;;
        shared) printf 'max_bytes = "64KiB"\n\n[cache.shared]\nurl = "redis://127.0.0.1:%s"\nkey_prefix = "%s:"\n' \
                "$redis_port" "$side" ;;
        *) echo "ab.sh: a tier is disk or shared, not $tier" >&2; exit 1 ;;
    esac
}

declare -A target pid_of
# start SIDE BIN MODE SERVER_LINES TIER: one cachet, filled with the 1000 objects.
start() {
    local side="$1" bin="$2" mode="$3" server_lines="$4" tier="$5"
    local dir="$work/$side" side_plugin="AB_${1}_PLUGIN" plugin reuse port admin_port tls_server_lines=""
    # Here, not in `cache_lines`: that runs in a subshell, whose PID list and port are lost.
    [[ "$tier" == shared ]] && start_redis
    [[ -x "$bin" ]] || { echo "ab.sh: $bin is not an executable (build it first)" >&2; exit 1; }
    case "$mode" in
        fresh) plugin="${!side_plugin:-$plugin_wasm}"; reuse=1 ;;
        reuse) plugin="${!side_plugin:-$plugin_wasm}"; reuse=1000000 ;;
        builtin) plugin="builtin:standard"; reuse=1 ;;
        *) echo "ab.sh: a mode is fresh, reuse or builtin, not $mode" >&2; exit 1 ;;
    esac
    mkdir -p "$dir"
    port="$(free_port)"
    admin_port="$(free_port)"
    target[$side]="http://127.0.0.1:$port/"
    if [[ "$tls" == 1 ]]; then
        local tls_port
        tls_port="$(free_port)"
        tls_server_lines="$(tls_lines "$tls_port" "$work")"
        target[$side]="https://127.0.0.1:$tls_port/"
    fi
    write_config "$dir/cachet.toml" "$port" "$admin_port" "$threads" "$tls_server_lines
$server_lines" "$(cache_lines "$side" "$tier")" "$origin_port" "$plugin" "$reuse"
    start_cachet "$bin" "$dir/cachet.toml" "$admin_port" || exit 1
    pid_of[$side]=$CACHET_PID
    fill "${target[$side]}" "" "$dir"
    list_urls "${target[$side]}" "" "$dir/h2-urls"
}

write_paths_lua "$work/paths.lua" ""

# load SIDE SECONDS OUT
load() {
    if [[ "$h2" == 1 ]]; then
        h2load -t2 -c"$((connections / 4))" -m4 -D"$2" -i "$work/$1/h2-urls" >"$3" 2>&1
        awk '/^requests:/ {print $8}' "$3"
    else
        wrk -t2 -c"$connections" -d"${2}s" -s "$work/paths.lua" "${target[$1]}" >"$3"
        awk '/^REQUESTS/ {print $2}' "$3"
    fi
}
hz="$(getconf CLK_TCK)"
thread_detail="${AB_THREAD_DETAIL:-0}"
declare -A detail

# thread_detail BEFORE AFTER REQUESTS: one line from two `thread_counters` readings.
thread_detail() {
    python3 - "$1" "$2" "$3" <<'EOF'
import sys
def read(path):
    return {f[0]: list(map(int, f[1:])) for f in (l.split() for l in open(path)) if len(f) == 4}
before, after, requests = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
deltas = [[a - b for a, b in zip(after[t], before.get(t, [0, 0, 0]))] for t in after]
busiest = sorted((d[0] for d in deltas), reverse=True)[:2] + [0, 0]
slept = sum(d[1] for d in deltas) * 1000 / requests
preempted = sum(d[2] for d in deltas) * 1000 / requests
print(f"CPU ticks of the two busiest {busiest[0]}/{busiest[1]}, per 1000 requests "
      f"{slept:.1f} sleeps and {preempted:.1f} preemptions")
EOF
}

start A "${AB_A_BIN:-$repo_root/target/release/cachet}" "${AB_A_MODE:-fresh}" "${AB_A_SERVER:-}" "${AB_A_TIER:-}"
start B "${AB_B_BIN:-$repo_root/target/release/cachet}" "${AB_B_MODE:-fresh}" "${AB_B_SERVER:-}" "${AB_B_TIER:-}"
load A 2 /dev/null >/dev/null
load B 2 /dev/null >/dev/null

echo "# A: ${AB_A_BIN:-target/release/cachet} ${AB_A_MODE:-fresh} ${AB_A_SERVER:-} ${AB_A_TIER:+tier $AB_A_TIER} ${AB_A_PLUGIN:-}"
echo "# B: ${AB_B_BIN:-target/release/cachet} ${AB_B_MODE:-fresh} ${AB_B_SERVER:-} ${AB_B_TIER:+tier $AB_B_TIER} ${AB_B_PLUGIN:-}"
protocol="HTTP/1.1 (wrk)"
[[ "$tls" == 1 ]] && protocol="HTTP/1.1 over TLS (wrk)"
[[ "$h2" == 1 ]] && protocol="HTTP/2 over TLS (h2load)"
echo "# $protocol, ${AB_SIZE:-1k} hits over 1000 URLs, $connections connections, $rounds rounds of ${seconds}s per side"
echo "round  A req/s  A µs/req  A p99 µs  B req/s  B µs/req  B p99 µs  B÷A µs"
: >"$work/rounds"
for round in $(seq "$rounds"); do
    order="A B"
    ((round % 2 == 0)) && order="B A"
    declare -A rate cpu p99
    for side in $order; do
        [[ "$thread_detail" == 1 ]] && thread_counters "${pid_of[$side]}" >"$work/threads.before"
        before="$(process_cpu_ticks "${pid_of[$side]}")"
        requests="$(load "$side" "$seconds" "$work/load.out")"
        after="$(process_cpu_ticks "${pid_of[$side]}")"
        [[ "$thread_detail" == 1 ]] && thread_counters "${pid_of[$side]}" >"$work/threads.after"
        [[ "$requests" =~ ^[0-9]+$ && "$requests" -gt 0 ]] || {
            echo "ab.sh: no requests measured on $side: $(tail -n 3 "$work/load.out")" >&2
            exit 1
        }
        rate[$side]=$((requests / seconds))
        # h2load reports no percentile without its per-request log: 0 stands for none.
        p99[$side]="$(awk '/^P99_US/ {print $2}' "$work/load.out")"
        p99[$side]="${p99[$side]:-0}"
        cpu[$side]="$(python3 -c "print(f'{($after - $before) / $hz * 1e6 / $requests:.2f}')")"
        if [[ "$thread_detail" == 1 ]]; then
            detail[$side]="$(thread_detail "$work/threads.before" "$work/threads.after" "$requests")"
        fi
    done
    ratio="$(python3 -c "print(f'{${cpu[B]} / ${cpu[A]}:.3f}')")"
    printf '%5d  %7d  %8s  %8s  %7d  %8s  %8s  %6s\n' "$round" "${rate[A]}" "${cpu[A]}" \
        "${p99[A]}" "${rate[B]}" "${cpu[B]}" "${p99[B]}" "$ratio"
    echo "${cpu[A]} ${cpu[B]} ${rate[A]} ${rate[B]} ${p99[A]} ${p99[B]}" >>"$work/rounds"
    if [[ "$thread_detail" == 1 ]]; then
        echo "       threads A: ${detail[A]}"
        echo "       threads B: ${detail[B]}"
    fi
done

python3 - "$work/rounds" <<'EOF'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
def summary(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"
a_cpu, b_cpu = [r[0] for r in rows], [r[1] for r in rows]
a_rate, b_rate = [r[2] for r in rows], [r[3] for r in rows]
a_p99, b_p99 = [r[4] for r in rows], [r[5] for r in rows]
ratios = [b / a for a, b in zip(a_cpu, b_cpu)]
def p99(values):
    return f", p99 {summary([v / 1000 for v in values])} ms" if min(values) > 0 else ""
print(f"A: {summary(a_cpu)} µs/request, {statistics.median(a_rate):,.0f} req/s{p99(a_p99)}")
print(f"B: {summary(b_cpu)} µs/request, {statistics.median(b_rate):,.0f} req/s{p99(b_p99)}")
cheaper = sum(1 for r in ratios if r < 1)
print(f"B ÷ A CPU per request: median {statistics.median(ratios):.3f} "
      f"({min(ratios):.3f}–{max(ratios):.3f}); B cheaper in {cheaper} of {len(ratios)} rounds")
EOF
