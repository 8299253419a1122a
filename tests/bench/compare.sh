#!/usr/bin/env bash
# Cache-hit comparison benchmark: cachet against Varnish, nginx proxy_cache and
# HAProxy's cache, all in front of one nginx origin serving static files, all
# on 127.0.0.1. A command, not a test: run it from anywhere with
#
#   bash tests/bench/compare.sh
#
# Every server is started and warmed once; then BENCH_ROUNDS rounds measure
# every target in turn (a different order each round), so slow phases of a
# shared machine spread over all targets. The table gives, per target, the
# median over the rounds and the spread (lowest–highest); ×origin is the
# median of each round's ratio to the origin measured in that round.
#
# cachet runs as a user first runs it: its default configuration (access log
# on, file watching on), stderr appended to cachet.log beside its config.
#
# Environment:
#   BENCH_SCENARIOS=full   "full" (every scenario), "quick" (1k-1000url-c64,
#                          5 s rounds: the whole run fits in 3 minutes), or a
#                          comma-separated list of scenario names
#                          (e.g. "1k-1url-c16,miss-1k-c64")
#   BENCH_ROUNDS=3         interleaved rounds (at least 1)
#   BENCH_SECONDS=10       length of each measured wrk run (quick: 5)
#   BENCH_WARMUP=2         length of the wrk warm-up before each measured run
#                          (quick: 1)
#   BENCH_ONLY=            comma-separated patterns; a target runs when one of
#                          them is part of its name (e.g. "cachet",
#                          "cachet-builtin,varnish"). The origin-direct row is
#                          always measured: it is the ×origin baseline.
#   BENCH_SERVER_THREADS=2 worker threads/processes of every server
#   BENCH_L2_MEMORY=64KiB  the memory tier in front of cachet-l2-disk and -shared:
#                          small, so nearly every hit is read from L2. Every object
#                          passes through memory, so one larger than it is never
#                          stored: 64k scenarios need e.g. 1MiB (then ~1.5 % of
#                          their hits are memory hits; the notes give the split)
#   BENCH_NO_BUILD=1       use the existing target/release/cachet and plugins
#   BENCH_KEEP=1           keep the temporary folder (configs, logs, wrk output)
#
# Targets: origin, cachet-builtin, cachet-builtin-fullpath (every hit on pingora-cache's
# full path: [cache] lean_hits = false), cachet-l2-disk and cachet-l2-shared (builtin
# policy with a 64 KiB memory tier (BENCH_L2_MEMORY), so nearly every 1 KiB hit is read from the disk tier
# or from a redis-server this script starts on loopback; the notes give each tier's
# share of the hits), cachet-wasm-fresh, cachet-wasm-reuse,
# varnish, nginx-cache, haproxy. Only when BENCH_ONLY names them (e.g.
# BENCH_ONLY=nosteal,static-assets,python): cachet-builtin-nosteal and
# cachet-wasm-fresh-nosteal ([server] work_stealing = false); cachet-static-assets-{fresh,reuse}
# and cachet-python-{fresh,reuse}, the static-assets policy in Rust and its Python
# twin (plugins/static-assets-py, ~6 ms a fresh instance: expect ~200 req/s);
# and pingora-floor (BENCH_ONLY=pingora-floor,cachet-builtin,nginx,haproxy): a
# bare Pingora server answering every request from request_filter with a fixed
# body (examples/pingora_floor.rs), no cache at all, over HTTP/1.1, TLS and
# HTTP/2: what Pingora itself costs per response; and front-floor (BENCH_ONLY=front-floor):
# the same answer from a connection handler that reads heads itself
# (examples/front_floor.rs, plain HTTP/1.1 only), the floor under cachet's front. Scenarios: {1k,64k}-{1url,1000url}-{c16,c64}
# (cache hits) and miss-1k-c64 (a URL that never repeats: every request is a
# miss that goes to the origin).
#
# TLS and HTTP/2 scenarios (in "full", or by name):
#   tls-1k-1000url-c64  the 1k-1000url-c64 hits over HTTPS (wrk, keep-alive,
#                       HTTP/1.1) to each target's TLS listener: cachet's
#                       tls_listen (rustls), nginx "listen ssl", HAProxy
#                       "bind ssl crt", and the origin nginx for ×origin
#   h2-1k-1000url-c64   the same hits over HTTP/2 (ALPN h2) with h2load: 16
#                       connections × 4 streams = 64 requests in flight;
#                       p50/p99 from h2load's per-request log
# Every TLS listener presents one ECDSA P-256 certificate made by this script
# (openssl req), offers TLS 1.3 only and follows the client's cipher order, so
# all negotiate the same suite; the suite each one negotiated is in the notes.
# Varnish has no TLS listener: its rows print n/a. Needs openssl (Debian
# package openssl) and, for HTTP/2, h2load (nghttp2-client); without them the
# rows print n/a.
#
# Prints a Markdown table on stdout and saves it under tests/bench/results/.
# Progress goes to stderr. A target that fails prints n/a and the run goes on;
# a missing tool is named with the Debian package that provides it.
set -uo pipefail

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/../.." && pwd)"
lua_script="$bench_dir/paths.lua"

BENCH_SCENARIOS="${BENCH_SCENARIOS:-full}"
if [[ "$BENCH_SCENARIOS" == quick ]]; then
    BENCH_SECONDS="${BENCH_SECONDS:-5}"
    BENCH_WARMUP="${BENCH_WARMUP:-1}"
fi
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_WARMUP="${BENCH_WARMUP:-2}"
BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
BENCH_ONLY="${BENCH_ONLY:-}"
BENCH_SERVER_THREADS="${BENCH_SERVER_THREADS:-2}"
BENCH_L2_MEMORY="${BENCH_L2_MEMORY:-64KiB}"
BENCH_NO_BUILD="${BENCH_NO_BUILD:-0}"
BENCH_KEEP="${BENCH_KEEP:-0}"

URL_COUNT=1000
WRK_THREADS=2

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for var in BENCH_SECONDS BENCH_WARMUP BENCH_SERVER_THREADS BENCH_ROUNDS; do
    [[ "${!var}" =~ ^[0-9]+$ ]] || die "$var must be a whole number of seconds/threads (got '${!var}')"
done
((BENCH_SECONDS > 0)) || die "BENCH_SECONDS must be at least 1"
((BENCH_SERVER_THREADS > 0)) || die "BENCH_SERVER_THREADS must be at least 1"
((BENCH_ROUNDS > 0)) || die "BENCH_ROUNDS must be at least 1"

# ---- Scenarios and targets ---------------------------------------------------

all_scenarios=()
for size in 1k 64k; do
    for urls in 1url 1000url; do
        for conns in c16 c64; do
            all_scenarios+=("$size-$urls-$conns")
        done
    done
done
all_scenarios+=("tls-1k-1000url-c64" "h2-1k-1000url-c64" "miss-1k-c64")

case "$BENCH_SCENARIOS" in
    full | all) scenarios=("${all_scenarios[@]}") ;;
    quick) scenarios=("1k-1000url-c64") ;;
    *)
        IFS=', ' read -r -a wanted <<<"$BENCH_SCENARIOS"
        for s in "${wanted[@]}"; do
            [[ " ${all_scenarios[*]} " == *" $s "* ]] ||
                die "unknown scenario '$s' (known: full, quick, ${all_scenarios[*]})"
        done
        # Keep the canonical order: the miss row, which fills the caches with
        # new objects, always runs last.
        scenarios=()
        for s in "${all_scenarios[@]}"; do
            [[ " ${wanted[*]} " == *" $s "* ]] && scenarios+=("$s")
        done
        ;;
esac

all_targets=(origin cachet-builtin cachet-builtin-fullpath cachet-wasm-fresh cachet-wasm-reuse cachet-l2-disk cachet-l2-shared varnish nginx-cache haproxy)
# Measured only when BENCH_ONLY names them: Pingora's runtime without work stealing
# ([server] work_stealing = false), and the same policy in Rust and in Python.
language_targets=(cachet-builtin-nosteal cachet-wasm-fresh-nosteal cachet-static-assets-fresh cachet-static-assets-reuse cachet-python-fresh cachet-python-reuse pingora-floor front-floor)
targets=(origin)
if [[ -n "$BENCH_ONLY" ]]; then
    IFS=', ' read -r -a patterns <<<"$BENCH_ONLY"
    for t in "${all_targets[@]:1}" "${language_targets[@]}"; do
        for p in "${patterns[@]}"; do
            if [[ -n "$p" && "$t" == *"$p"* ]]; then
                targets+=("$t")
                break
            fi
        done
    done
    ((${#targets[@]} > 1)) || log "BENCH_ONLY='$BENCH_ONLY' matches no target besides origin (known: ${all_targets[*]} ${language_targets[*]})"
else
    targets=("${all_targets[@]}")
fi

# Whether any selected scenario runs over TLS (HTTPS or HTTP/2).
tls_wanted=0 h2_wanted=0
for s in "${scenarios[@]}"; do
    case "$s" in
        tls-*) tls_wanted=1 ;;
        h2-*) tls_wanted=1 h2_wanted=1 ;;
    esac
done

wants() { # wants PATTERN: is any selected target's name matching PATTERN?
    local t
    for t in "${targets[@]}"; do
        # shellcheck disable=SC2053 # the pattern is meant to glob
        [[ "$t" == $1 ]] && return 0
    done
    return 1
}

# ---- Temporary folder, processes, cleanup ---------------------------------------

work="$(mktemp -d "${TMPDIR:-/tmp}/cachet-bench.XXXXXX")" || die "mktemp failed"
# Servers that drop privileges (nginx workers, varnish) must read their files.
chmod 0755 "$work"

declare -A stop_signal=() # pid -> signal that stops it quickly
started_pids=()

stop_pid() { # stop_pid PID: its signal, then KILL after 5 s
    local pid="$1" sig="${stop_signal[$1]:-TERM}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -s "$sig" "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIG$sig for 5 s: killing it"
        kill -s KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local pid
    for pid in "${started_pids[@]}"; do
        stop_pid "$pid"
    done
    if [[ "$BENCH_KEEP" == 1 ]]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# start_bg NAME SIGNAL CMD...: runs CMD in the background, output to a log in
# the temporary folder; sets BG_PID.
start_bg() {
    local name="$1" sig="$2"
    shift 2
    "$@" </dev/null >"$work/$name.out" 2>&1 &
    BG_PID=$!
    started_pids+=("$BG_PID")
    stop_signal[$BG_PID]="$sig"
}

# A port no socket uses yet, below the kernel's ephemeral range (so that no
# client connection of this run can hold it), never handed out twice.
declare -A used_ports=()
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || ephemeral_low=32768
port_low=10000 port_high=$((ephemeral_low - 1))
((port_high - port_low >= 1000)) || port_low=$((ephemeral_low + 20000)) port_high=65000
free_port() {
    local port i
    for ((i = 0; i < 500; i++)); do
        port=$((port_low + (RANDOM * 32768 + RANDOM) % (port_high - port_low + 1)))
        [[ -n "${used_ports[$port]:-}" ]] && continue
        if command -v ss >/dev/null; then
            [[ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]] || continue
        fi
        # A successful connect means something listens there.
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        used_ports[$port]=1
        FREE_PORT="$port"
        return 0
    done
    die "no free port found"
}

# The most telling line of a server's log: a panic, an error, else the last one.
last_error() {
    local line
    line="$(sed -E 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null |
        grep -E -i -m 1 "panicked|error|alert|emerg|refus|in use|unknown|invalid" )"
    [[ -n "$line" ]] || line="$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1)"
    printf '%s' "${line:0:200}"
}

# wait_http URL PID SECONDS: until URL answers 200 (0), PID dies or time is up (1).
wait_http() {
    local url="$1" pid="$2" deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url")" == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

# CPU ticks (utime + stime) of PID and all its descendants, read from /proc.
cpu_ticks() {
    local f
    for f in /proc/[0-9]*/stat; do
        cat "$f" 2>/dev/null
    done | awk -v root="$1" '
        {
            # The command name is in parentheses and may hold spaces: take the
            # fields after the last ")". Then $1 = state, $2 = ppid, $12 = utime, $13 = stime.
            pid = $1
            rest = substr($0, match($0, /\)[^)]*$/) + 2)
            n = split(rest, f, " ")
            if (n < 13) next
            parent[pid] = f[2]
            ticks[pid] = f[12] + f[13]
        }
        END {
            if (!(root in ticks)) { print "NA"; exit }
            inset[root] = 1; total = 0; grew = 1
            while (grew) {
                grew = 0
                for (p in parent) if (!(p in inset) && (parent[p] in inset)) { inset[p] = 1; grew = 1 }
            }
            for (p in inset) total += ticks[p]
            print total
        }'
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# ---- Tools ---------------------------------------------------------------------------

# Names what is missing and the Debian package that provides it. Without wrk,
# curl or nginx (the origin) nothing can run; without Varnish or HAProxy
# their rows print n/a.
check_tools() {
    local -a missing=() optional=()
    command -v curl >/dev/null || missing+=(curl)
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -n "$(tool nginx)" ]] || missing+=(nginx-light)
    if wants varnish && [[ -z "$(tool varnishd)" ]]; then optional+=(varnish); fi
    if wants haproxy && [[ -z "$(tool haproxy)" ]]; then optional+=(haproxy); fi
    if ((tls_wanted)) && ! command -v openssl >/dev/null; then optional+=(openssl); fi
    if ((h2_wanted)) && ! command -v h2load >/dev/null; then optional+=(nghttp2-client); fi
    if ((${#optional[@]})); then
        log "not installed: ${optional[*]} (their rows print n/a); install with: apt-get install ${optional[*]}"
    fi
    ((${#missing[@]} == 0)) || die "missing tools; install with: apt-get install ${missing[*]}"
}

tool() { # tool NAME: its path (also looks in /usr/sbin, which may not be on PATH)
    command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; }
}

# ---- TLS: one certificate for every listener -----------------------------------------

tls_dir="$work/tls"
tls_err="" # why the TLS rows print n/a, when they do

make_certificate() {
    command -v openssl >/dev/null || { tls_err="openssl not installed (apt-get install openssl)"; return 1; }
    mkdir -p "$tls_dir"
    if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$tls_dir/key.pem" -out "$tls_dir/cert.pem" >"$tls_dir/openssl.out" 2>&1; then
        tls_err="openssl req failed: $(tail -n 1 "$tls_dir/openssl.out" | cut -c1-120)"
        return 1
    fi
    # HAProxy takes the certificate and its key in one file.
    cat "$tls_dir/cert.pem" "$tls_dir/key.pem" >"$tls_dir/combined.pem"
    chmod -R a+rX "$tls_dir"
}

nginx_version() { "$(tool nginx)" -v 2>&1 | sed -E 's|.*nginx/([0-9.]+).*|\1|'; }

# nginx_tls_server PORT: the opening lines of an nginx server block listening
# with TLS (and HTTP/2 by ALPN) on PORT, with the benchmark's certificate.
nginx_tls_server() {
    local http2_listen=" http2" http2_line=""
    # nginx 1.25.1 replaced "listen ... http2" with the "http2" directive.
    if printf '%s\n%s\n' "1.25.1" "$(nginx_version)" | sort -V -C; then
        http2_listen="" http2_line="http2 on;"
    fi
    cat <<EOF
        listen 127.0.0.1:$1 ssl$http2_listen;
        $http2_line
        ssl_certificate $tls_dir/cert.pem;
        ssl_certificate_key $tls_dir/key.pem;
        ssl_protocols TLSv1.3;
        ssl_prefer_server_ciphers off;
EOF
}

# ---- The origin: nginx serving two static files -------------------------------------

origin_port=""
origin_pid=""
origin_tls_port=""

# nginx_conf DIR COMMENT: writes DIR/nginx.conf for an nginx of this benchmark
# (the origin or the cache): the settings both share, then the directives
# read from stdin inside the http block.
nginx_conf() {
    local dir="$1"
    {
        printf '# %s\n' "$2"
        cat <<EOF
daemon off;
master_process on;
user $(id -un) $(id -gn);
worker_processes $BENCH_SERVER_THREADS;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
        cat
        echo "}"
    } >"$dir/nginx.conf"
}

start_origin() {
    local dir="$work/origin"
    mkdir -p "$dir/www" "$dir/tmp"
    head -c 1024 /dev/zero | tr '\0' 'a' >"$dir/www/1k"
    head -c 65536 /dev/zero | tr '\0' 'b' >"$dir/www/64k"
    chmod -R a+rX "$dir"
    free_port; origin_port="$FREE_PORT"
    local files="
        root $dir/www;
        location /obj/ {
            rewrite ^/obj/[^/]+/(1k|64k)\$ /\$1 break;
            add_header Cache-Control \"max-age=3600\";
        }"
    local tls_server=""
    if ((tls_wanted)) && [[ -z "$tls_err" ]]; then
        free_port; origin_tls_port="$FREE_PORT"
        tls_server="    server {
$(nginx_tls_server "$origin_tls_port")
$files
        location / {
            return 404;
        }
    }"
    fi
    nginx_conf "$dir" "origin: serves /obj/<anything>/1k and /obj/<anything>/64k from two files." <<EOF
    server {
        listen 127.0.0.1:$origin_port;
$files
        location = /__status {
            stub_status;
        }
        location / {
            return 404;
        }
    }
$tls_server
EOF
    start_bg origin TERM "$(tool nginx)" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    origin_pid="$BG_PID"
    wait_http "http://127.0.0.1:$origin_port/obj/0/1k" "$origin_pid" 15 || {
        cat "$work/origin.out" "$dir/error.log" >&2 2>/dev/null
        die "the origin nginx did not start"
    }
    local headers
    headers="$(curl -s -D - -o /dev/null "http://127.0.0.1:$origin_port/obj/7/64k")"
    [[ "$headers" == *"max-age=3600"* && "$headers" == *"Content-Length: 65536"* ]] ||
        die "the origin does not answer as expected: $headers"
}

# Requests the origin has handled so far (nginx stub_status; each read adds one).
origin_requests() {
    curl -s -m 5 "http://127.0.0.1:$origin_port/__status" | awk 'NR == 3 { print $3 }'
}

# ---- The targets ---------------------------------------------------------------------
# start_TARGET sets TARGET_PORT and TARGET_PID and returns 0 once it serves, or
# sets TARGET_ERR and returns 1. With TLS scenarios it also opens a TLS
# listener and sets TARGET_TLS_PORT (or TARGET_TLS_ERR).

cachet_built=""   # "", "ok", or the reason it is not
plugins_built=""

# release_build LOG BINARY CARGO_ARGS...: builds with `cargo build --release` (unless
# BENCH_NO_BUILD=1) and prints "ok", or the reason BINARY cannot be run.
release_build() {
    local log_file="$1" binary="$2"
    shift 2
    if [[ "$BENCH_NO_BUILD" != 1 ]]; then
        log "building (cargo build --release $*)"
        if ! (cd "$repo_root" && timeout 1800 cargo build --release "$@") >"$work/$log_file" 2>&1; then
            tail -n 30 "$work/$log_file" >&2
            echo "cargo build failed"
            return
        fi
    fi
    if [[ -x "$repo_root/$binary" ]]; then echo ok; else echo "no $binary"; fi
}

build_cachet() {
    [[ -n "$cachet_built" ]] || cachet_built="$(release_build build-cachet.log target/release/cachet -p cachet)"
}

floor_built=""
build_floor() {
    [[ -n "$floor_built" ]] ||
        floor_built="$(release_build build-floor.log target/release/examples/pingora_floor -p cachet --example pingora_floor --example front_floor)"
}

build_plugins() {
    [[ -n "$plugins_built" ]] && return 0
    if [[ "$BENCH_NO_BUILD" == 1 ]]; then
        plugins_built=ok
    else
        log "building the plugins (bash plugins/build.sh)"
        if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
            rustup target add wasm32-unknown-unknown >"$work/build-plugins.log" 2>&1
        fi
        # The release binary just built wraps the modules into components.
        if (cd "$repo_root" && CACHET="$repo_root/target/release/cachet" timeout 1800 bash plugins/build.sh) >>"$work/build-plugins.log" 2>&1; then
            plugins_built=ok
        else
            tail -n 30 "$work/build-plugins.log" >&2
            plugins_built="plugins/build.sh failed"
        fi
    fi
    [[ "$plugins_built" != ok || -f "$repo_root/plugins/standard.wasm" ]] || plugins_built="no plugins/standard.wasm"
    if [[ "$plugins_built" == ok && "$BENCH_NO_BUILD" != 1 ]] && wants '*python*'; then
        log "building the Python plugin (bash plugins/static-assets-py/build.sh)"
        (cd "$repo_root" && timeout 600 bash plugins/static-assets-py/build.sh) >>"$work/build-plugins.log" 2>&1 ||
            log "plugins/static-assets-py/build.sh failed: the Python rows will print n/a"
    fi
}

# start_redis: one redis-server for the shared tier on loopback, no persistence.
redis_port=""
start_redis() {
    [[ -n "$redis_port" ]] && return 0
    local redis
    redis="$(tool redis-server)" || { TARGET_ERR="redis-server not installed (Debian package redis-server)"; return 1; }
    free_port
    start_bg redis TERM "$redis" --bind 127.0.0.1 --port "$FREE_PORT" --save "" --appendonly no
    local i
    for i in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$FREE_PORT") 2>/dev/null; then
            redis_port="$FREE_PORT"
            return 0
        fi
        sleep 0.1
    done
    TARGET_ERR="redis-server did not start: $(last_error "$work/redis.out")"
    return 1
}

# start_cachet NAME PLUGIN [INSTANCE_REUSE [CACHE_LINES [TIER_SECTIONS]]]
start_cachet() {
    local name="$1" plugin="$2" reuse="${3:-}" cache_lines="${4:-}" tiers="${5:-}" server_lines="${6:-}" dir="$work/$1"
    build_cachet
    if [[ "$cachet_built" != ok ]]; then
        TARGET_ERR="$cachet_built"
        return 1
    fi
    if [[ "$plugin" != builtin:* ]]; then
        build_plugins
        if [[ "$plugins_built" != ok ]]; then
            TARGET_ERR="$plugins_built"
            return 1
        fi
    fi
    mkdir -p "$dir"
    free_port; TARGET_PORT="$FREE_PORT"
    local admin_port tls_lines=""
    free_port; admin_port="$FREE_PORT"; TARGET_ADMIN_PORT="$admin_port"
    if ((tls_wanted)) && [[ -z "$tls_err" ]]; then
        free_port; TARGET_TLS_PORT="$FREE_PORT"
        tls_lines="tls_listen = \"127.0.0.1:$TARGET_TLS_PORT\"
tls_cert = \"$tls_dir/cert.pem\"
tls_key = \"$tls_dir/key.pem\""
    fi
    {
        cat <<EOF
[server]
listen = "127.0.0.1:$TARGET_PORT"
admin = "127.0.0.1:$admin_port"
threads = $BENCH_SERVER_THREADS
$server_lines
$tls_lines

[cache]
$([[ "$cache_lines" == max_bytes* ]] || echo 'max_bytes = "512MiB"')
$cache_lines

$tiers

[plugins]
artifact_cache_dir = "$dir/artifacts"

[[tenant]]
name = "bench"
hosts = ["*"]
upstream = "127.0.0.1:$origin_port"
plugin = "$plugin"
EOF
        if [[ -n "$reuse" ]]; then
            printf '\n[tenant.limits]\ninstance_reuse = %s\n' "$reuse"
        fi
    } >"$dir/cachet.toml"
    # Appended (O_APPEND), so it can be emptied between runs to bound the disk.
    "$repo_root/target/release/cachet" serve --config "$dir/cachet.toml" \
        </dev/null >/dev/null 2>>"$dir/cachet.log" &
    TARGET_PID=$!
    started_pids+=("$TARGET_PID")
    stop_signal[$TARGET_PID]=INT
    TARGET_LOG="$dir/cachet.log"
    if ! wait_http "http://127.0.0.1:$admin_port/status" "$TARGET_PID" 60; then
        TARGET_ERR="cachet did not become ready: $(last_error "$dir/cachet.log")"
        return 1
    fi
}

start_floor() {
    build_floor
    if [[ "$floor_built" != ok ]]; then
        TARGET_ERR="$floor_built"
        return 1
    fi
    free_port; TARGET_PORT="$FREE_PORT"
    local tls_args=()
    if ((tls_wanted)) && [[ -z "$tls_err" ]]; then
        free_port; TARGET_TLS_PORT="$FREE_PORT"
        tls_args=("127.0.0.1:$TARGET_TLS_PORT" "$tls_dir/cert.pem" "$tls_dir/key.pem")
    fi
    start_bg pingora-floor TERM "$repo_root/target/release/examples/pingora_floor" \
        "$BENCH_SERVER_THREADS" "127.0.0.1:$TARGET_PORT" "${tls_args[@]}"
    TARGET_PID="$BG_PID"
    if ! wait_http "http://127.0.0.1:$TARGET_PORT/obj/0/1k" "$TARGET_PID" 30; then
        TARGET_ERR="pingora_floor did not start: $(last_error "$work/pingora-floor.out")"
        return 1
    fi
}

start_front_floor() {
    build_floor
    if [[ "$floor_built" != ok ]]; then
        TARGET_ERR="$floor_built"
        return 1
    fi
    free_port; TARGET_PORT="$FREE_PORT"
    TARGET_TLS_ERR="front_floor speaks plain HTTP/1.1 only"
    start_bg front-floor TERM "$repo_root/target/release/examples/front_floor" \
        "$BENCH_SERVER_THREADS" "127.0.0.1:$TARGET_PORT"
    TARGET_PID="$BG_PID"
    if ! wait_http "http://127.0.0.1:$TARGET_PORT/obj/0/1k" "$TARGET_PID" 30; then
        TARGET_ERR="front_floor did not start: $(last_error "$work/front-floor.out")"
        return 1
    fi
}

start_varnish() {
    local dir="$work/varnish" varnishd
    varnishd="$(tool varnishd)" || { TARGET_ERR="varnishd not installed"; return 1; }
    mkdir -p "$dir"
    free_port; TARGET_PORT="$FREE_PORT"
    cat >"$dir/bench.vcl" <<EOF
vcl 4.1;

backend origin {
    .host = "127.0.0.1";
    .port = "$origin_port";
}

sub vcl_hash {
    hash_data(req.url);
    if (req.http.host) {
        hash_data(req.http.host);
    } else {
        hash_data(server.ip);
    }
    return (lookup);
}
EOF
    chmod -R a+rX "$dir"
    # -F: foreground (this PID is the manager; the cache child is its child).
    # -T none: no management port. -j none: no privilege separation, so the
    # work folder inside our temporary folder just works, as root or not.
    start_bg varnish TERM "$varnishd" -F -j none -T none \
        -n "$dir/workdir" -a "127.0.0.1:$TARGET_PORT" -f "$dir/bench.vcl" \
        -s malloc,512m -P "$dir/varnishd.pid" \
        -p thread_pools="$BENCH_SERVER_THREADS"
    TARGET_PID="$BG_PID"
    TARGET_TLS_ERR="Varnish has no TLS listener"
    if ! wait_http "http://127.0.0.1:$TARGET_PORT/obj/0/1k" "$TARGET_PID" 30; then
        TARGET_ERR="varnish did not start: $(last_error "$work/varnish.out")"
        return 1
    fi
}

start_nginx_cache() {
    local dir="$work/nginx-cache"
    mkdir -p "$dir/cache" "$dir/tmp"
    free_port; TARGET_PORT="$FREE_PORT"
    local cache_location="
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_cache bench;
            proxy_cache_key \$host\$request_uri;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status;
        }"
    local tls_server=""
    if ((tls_wanted)) && [[ -z "$tls_err" ]]; then
        free_port; TARGET_TLS_PORT="$FREE_PORT"
        tls_server="    server {
$(nginx_tls_server "$TARGET_TLS_PORT")
$cache_location
    }"
    fi
    nginx_conf "$dir" "nginx as a caching reverse proxy in front of the origin." <<EOF
    proxy_cache_path $dir/cache levels=1:2 keys_zone=bench:32m max_size=512m
                     inactive=1h use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$origin_port;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$TARGET_PORT;
$cache_location
    }
$tls_server
EOF
    start_bg nginx-cache TERM "$(tool nginx)" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    TARGET_PID="$BG_PID"
    if ! wait_http "http://127.0.0.1:$TARGET_PORT/obj/0/1k" "$TARGET_PID" 15; then
        TARGET_ERR="nginx did not start: $(cat "$work/nginx-cache.out" "$dir/error.log" 2>/dev/null | tail -n 1 | cut -c1-160)"
        return 1
    fi
}

start_haproxy() {
    local dir="$work/haproxy" haproxy
    haproxy="$(tool haproxy)" || { TARGET_ERR="haproxy not installed"; return 1; }
    mkdir -p "$dir"
    free_port; TARGET_PORT="$FREE_PORT"
    local tls_bind=""
    if ((tls_wanted)) && [[ -z "$tls_err" ]]; then
        free_port; TARGET_TLS_PORT="$FREE_PORT"
        # TLS 1.3 only, the client's cipher order, HTTP/2 or HTTP/1.1 by ALPN.
        tls_bind="    bind 127.0.0.1:$TARGET_TLS_PORT ssl crt $tls_dir/combined.pem ssl-min-ver TLSv1.3 prefer-client-ciphers alpn h2,http/1.1"
    fi
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $BENCH_SERVER_THREADS
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

# In-memory cache: total-max-size in MiB, max-object-size in bytes (must be
# at most half the total), max-age caps the origin's max-age.
cache bench
    total-max-size 512
    max-object-size 1048576
    max-age 3600

frontend bench
    bind 127.0.0.1:$TARGET_PORT
$tls_bind
    default_backend origin

backend origin
    http-request cache-use bench
    http-response cache-store bench
    server origin 127.0.0.1:$origin_port
EOF
    if ! "$haproxy" -c -q -f "$dir/haproxy.cfg" >"$dir/check.out" 2>&1; then
        TARGET_ERR="haproxy refuses the config: $(head -n 1 "$dir/check.out" | cut -c1-160)"
        return 1
    fi
    # -db: stay in the foreground, a single process with threads.
    start_bg haproxy TERM "$haproxy" -db -f "$dir/haproxy.cfg"
    TARGET_PID="$BG_PID"
    if ! wait_http "http://127.0.0.1:$TARGET_PORT/obj/0/1k" "$TARGET_PID" 15; then
        TARGET_ERR="haproxy did not start: $(last_error "$work/haproxy.out")"
        return 1
    fi
}

start_target() {
    TARGET_PORT="" TARGET_PID="" TARGET_ERR="" TARGET_LOG="" TARGET_TLS_PORT="" TARGET_TLS_ERR="" TARGET_ADMIN_PORT=""
    case "$1" in
        origin) TARGET_PORT="$origin_port" TARGET_PID="$origin_pid" TARGET_TLS_PORT="$origin_tls_port" ;;
        cachet-builtin) start_cachet "$1" builtin:standard ;;
        cachet-builtin-fullpath) start_cachet "$1" builtin:standard 1 "lean_hits = false" ;;
        cachet-l2-disk) start_cachet "$1" builtin:standard 1 "max_bytes = \"$BENCH_L2_MEMORY\"" \
            "[cache.disk]
path = \"$work/$1/disk\"
max_bytes = \"256MiB\"" ;;
        cachet-l2-shared) start_redis && start_cachet "$1" builtin:standard 1 "max_bytes = \"$BENCH_L2_MEMORY\"" \
            "[cache.shared]
url = \"redis://127.0.0.1:$redis_port\"" ;;
        cachet-wasm-fresh) start_cachet "$1" "$repo_root/plugins/standard.wasm" 1 ;;
        cachet-wasm-reuse) start_cachet "$1" "$repo_root/plugins/standard.wasm" 1000000 ;;
        cachet-builtin-nosteal) start_cachet "$1" builtin:standard 1 "" "" "work_stealing = false" ;;
        cachet-wasm-fresh-nosteal) start_cachet "$1" "$repo_root/plugins/standard.wasm" 1 "" "" \
            "work_stealing = false" ;;
        cachet-static-assets-fresh) start_cachet "$1" "$repo_root/plugins/static-assets.wasm" 1 ;;
        cachet-static-assets-reuse) start_cachet "$1" "$repo_root/plugins/static-assets.wasm" 1000000 ;;
        cachet-python-fresh) start_cachet "$1" "$repo_root/plugins/static-assets-py.wasm" 1 ;;
        cachet-python-reuse) start_cachet "$1" "$repo_root/plugins/static-assets-py.wasm" 1000000 ;;
        pingora-floor) start_floor ;;
        front-floor) start_front_floor ;;
        varnish) start_varnish ;;
        nginx-cache) start_nginx_cache ;;
        haproxy) start_haproxy ;;
        *) TARGET_ERR="unknown target" && false ;;
    esac
}

# ---- Load ----------------------------------------------------------------------------

# warm_all_urls PORT [SCHEME]: every one of the URL_COUNT URLs of both sizes
# once, over one keep-alive connection (https: trusting the benchmark's certificate).
warm_all_urls() {
    local port="$1" scheme="${2:-http}" size n
    {
        for size in 1k 64k; do
            for ((n = 0; n < URL_COUNT; n++)); do
                printf 'url = "%s://127.0.0.1:%s/obj/%s/%s"\noutput = "/dev/null"\n' "$scheme" "$port" "$n" "$size"
            done
        done
    } >"$work/warm.curl"
    local ok trust=()
    [[ "$scheme" == https ]] && trust=(--cacert "$tls_dir/cert.pem")
    ok="$(timeout 120 curl -s -m 10 "${trust[@]}" -w '%{http_code}\n' -K "$work/warm.curl" | grep -c '^200$')"
    ((ok == 2 * URL_COUNT))
}

# tls_cipher PORT: the protocol and cipher suite an OpenSSL client (as wrk's)
# negotiates with the TLS listener on PORT.
tls_cipher() {
    timeout 10 openssl s_client -connect "127.0.0.1:$1" </dev/null 2>/dev/null |
        awk '/^New, / { p = $2; sub(/,$/, "", p); print p, $NF; exit }'
}

# run_h2load OUT CONNS SECONDS URLS_FILE [LOG]: one bounded h2load run over
# HTTP/2 (ALPN h2); CONNS requests in flight as CONNS/4 connections × 4 streams.
run_h2load() {
    local out="$1" conns="$2" secs="$3" urls="$4" logfile="${5:-}" clients
    clients=$((conns / 4))
    ((clients >= WRK_THREADS)) || clients=$WRK_THREADS
    timeout -k 5 $((secs + 30)) h2load -t"$WRK_THREADS" -c"$clients" -m4 -D"$secs" \
        ${logfile:+--log-file="$logfile"} -i "$urls" >"$out" 2>&1
}

# run_wrk OUT CONNS SECONDS URL MODE SIZE TAG: one bounded wrk run.
run_wrk() {
    local out="$1" conns="$2" secs="$3" url="$4" mode="$5" size="$6" tag="$7"
    timeout -k 5 $((secs + 30)) wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" --timeout 5s --latency \
        -s "$lua_script" "$url" -- "$mode" "$size" "$URL_COUNT" "$tag" >"$out" 2>&1
}

fmt_latency() { # microseconds -> "123 µs" / "1.23 ms"
    awk -v us="$1" 'BEGIN { if (us < 1000) printf "%d µs", us; else printf "%.2f ms", us / 1000 }'
}

results="$work/results.tsv" # scenario target round rps p50_us p99_us cpu hit note
: >"$results"
notes=()

record_na() { # record_na SCENARIO TARGET ROUND REASON
    printf '%s\t%s\t%s\tn/a\tn/a\tn/a\tn/a\tn/a\t%s\n' "$1" "$2" "$3" "$4" >>"$results"
}

# h2_urls PORT MODE SIZE: a file of the URLs h2load cycles through (1 or URL_COUNT).
h2_urls() {
    local file="$work/h2-urls-$1-$2-$3" n count=1
    [[ "$2" == rotate ]] && count=$URL_COUNT
    if [[ ! -f "$file" ]]; then
        for ((n = 0; n < count; n++)); do
            printf 'https://127.0.0.1:%s/obj/%s/%s\n' "$1" "$n" "$3"
        done >"$file"
    fi
    printf '%s' "$file"
}

# h2_summary OUT LOG: "requests duration_us p50_us p99_us errors alpn protocol
# cipher" from an h2load run's output and per-request log.
h2_summary() {
    local percentiles
    percentiles="$(cut -f3 "$2" 2>/dev/null | sort -n | awk '
        { a[NR] = $1 }
        END { if (NR == 0) print "0 0"; else print a[int((NR - 1) * 0.5) + 1], a[int((NR - 1) * 0.99) + 1] }')"
    awk -v pct="$percentiles" '
        /^finished in/ {
            d = $3; sub(/,$/, "", d)
            if (d ~ /ms$/) { sub(/ms$/, "", d); us = d * 1000 } else { sub(/s$/, "", d); us = d * 1e6 }
        }
        /^requests:/ { done = $6; errs += $10 + $12 + $14 }
        /^status codes:/ { errs += $7 + $9 }
        /^TLS Protocol:/ { proto = $3 }
        /^Cipher:/ { cipher = $2 }
        /^Application protocol:/ { alpn = $3 }
        END {
            printf "%d %.0f %s %d %s %s %s\n", done, us, pct, errs,
                (alpn == "" ? "none" : alpn), (proto == "" ? "?" : proto), (cipher == "" ? "?" : cipher)
        }' "$1"
}

# measure TARGET SCENARIO ROUND: warm-up, then a measured wrk (or h2load) run;
# appends a row.
measure() {
    local target="$1" scenario="$2" round="$3" size urls conns mode url tag="" proto=http rest="$2"
    case "$scenario" in
        tls-*) proto=tls rest="${scenario#tls-}" ;;
        h2-*) proto=h2 rest="${scenario#h2-}" ;;
    esac
    IFS=- read -r size urls conns <<<"$rest"
    if [[ "$size" == miss ]]; then
        # miss-1k-c64: the fields are miss, size, connections.
        mode=miss size="$urls" tag="r$round"
    elif [[ "$urls" == 1url ]]; then
        mode=one
    else
        mode=rotate
    fi
    conns="${conns#c}"
    local port="${target_port[$target]}" pid="${target_pid[$target]}"
    url="http://127.0.0.1:$port/"
    if [[ "$proto" != http ]]; then
        port="${target_tls_port[$target]:-}"
        if [[ -z "$port" ]]; then
            record_na "$scenario" "$target" "$round" "${target_tls_err[$target]:-${tls_err:-no TLS listener}}"
            return
        fi
        url="https://127.0.0.1:$port/"
    fi
    if [[ "$proto" == h2 ]] && ! command -v h2load >/dev/null; then
        record_na "$scenario" "$target" "$round" "h2load not installed (apt-get install nghttp2-client)"
        return
    fi
    local base="$work/wrk-$target-$scenario-r$round" h2_list=""
    [[ "$proto" == h2 ]] && h2_list="$(h2_urls "$port" "$mode" "$size")"
    # The access log of the previous run is not needed: keep the disk bounded.
    [[ -n "${target_log[$target]:-}" ]] && : >"${target_log[$target]}"

    if ((BENCH_WARMUP > 0)); then
        if [[ "$proto" == h2 ]]; then
            run_h2load "$base-warmup.out" "$conns" "$BENCH_WARMUP" "$h2_list"
        else
            run_wrk "$base-warmup.out" "$conns" "$BENCH_WARMUP" "$url" "$mode" "$size" "w$round"
        fi
    fi
    kill -0 "$pid" 2>/dev/null || { record_na "$scenario" "$target" "$round" "server died"; return; }

    local cpu0 cpu1 org0="" org1="" rc
    [[ "$target" != origin ]] && org0="$(origin_requests)"
    cpu0="$(cpu_ticks "$pid")"
    if [[ "$proto" == h2 ]]; then
        run_h2load "$base.out" "$conns" "$BENCH_SECONDS" "$h2_list" "$base.log"
    else
        run_wrk "$base.out" "$conns" "$BENCH_SECONDS" "$url" "$mode" "$size" "$tag"
    fi
    rc=$?
    cpu1="$(cpu_ticks "$pid")"
    [[ "$target" != origin ]] && org1="$(origin_requests)"

    local requests duration p50 p99 errs
    if [[ "$proto" == h2 ]]; then
        local alpn tls_proto cipher
        read -r requests duration p50 p99 errs alpn tls_proto cipher <<<"$(h2_summary "$base.out" "$base.log")"
        rm -f "$base.log"
        if ((rc != 0)) || [[ "$alpn" != h2 ]]; then
            record_na "$scenario" "$target" "$round" "h2load failed (exit $rc, ALPN $alpn): $(grep -v '^$' "$base.out" | tail -n 1 | cut -c1-120)"
            return
        fi
        [[ -n "${h2_noted[$target]:-}" ]] || notes+=("$target: HTTP/2 by ALPN h2, $tls_proto $cipher (h2load)")
        h2_noted[$target]=1
    else
        local line
        line="$(grep '^BENCH ' "$base.out" | tail -n 1)"
        if ((rc != 0)) || [[ -z "$line" ]]; then
            record_na "$scenario" "$target" "$round" "wrk failed (exit $rc): $(tail -n 1 "$base.out" | cut -c1-120)"
            return
        fi
        requests="$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$line")"
        duration="$(sed -E 's/.* duration_us=([0-9]+).*/\1/' <<<"$line")"
        p50="$(sed -E 's/.* p50_us=([0-9]+).*/\1/' <<<"$line")"
        p99="$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line")"
        errs="$(awk '{ s = 0; for (i = 1; i <= NF; i++) if ($i ~ /^err_/) { split($i, kv, "="); s += kv[2] } print s }' <<<"$line")"
    fi
    if ((requests == 0)); then
        record_na "$scenario" "$target" "$round" "no request completed"
        return
    fi
    local rps cpu hit="n/a" note=""
    rps="$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r * 1e6 / d }')"
    if [[ "$cpu0" == NA || "$cpu1" == NA ]]; then
        cpu="n/a"
    else
        cpu="$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" -v r="$requests" \
            'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / r }')"
    fi
    if [[ -n "$org0" && -n "$org1" ]]; then
        # Origin fetches during the run (minus our own status read) per request.
        hit="$(awk -v a="$org0" -v b="$org1" -v r="$requests" \
            'BEGIN { f = b - a - 1; if (f < 0) f = 0; h = 100 * (1 - f / r); if (h < 0) h = 0; printf "%.1f", h }')"
    fi
    ((errs > 0)) && note="$errs errors (non-2xx/3xx, socket)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$scenario" "$target" "$round" "$rps" \
        "$p50" "$p99" "$cpu" "$hit" "$note" >>"$results"
    log "  round $round $scenario $target: $rps req/s, p50 $(fmt_latency "$p50"), p99 $(fmt_latency "$p99"), CPU $cpu µs/req, hit ${hit}%${note:+, $note}"
}

# ---- Run -----------------------------------------------------------------------------

started_at=$SECONDS
check_tools

log "targets: ${targets[*]}"
log "scenarios: ${scenarios[*]}, $BENCH_ROUNDS rounds of ${BENCH_SECONDS}s (+${BENCH_WARMUP}s warm-up)"
log "temporary folder: $work"

# Build before anything listens, so compilation does not overlap a measurement.
if wants 'cachet-*'; then build_cachet; fi
if wants 'cachet-wasm-*'; then build_plugins; fi

# What is measured: the commit built just now, and how busy the machine was.
commit="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    commit="$commit (with uncommitted changes)"
fi
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

if ((tls_wanted)); then
    make_certificate || log "TLS rows: n/a ($tls_err)"
fi

start_origin
log "origin nginx on 127.0.0.1:$origin_port (pid $origin_pid)${origin_tls_port:+, TLS on $origin_tls_port}"

# Start and warm every target once; the rounds then only measure.
declare -A target_port=() target_pid=() target_log=() target_err=() target_admin=()
declare -A target_tls_port=() target_tls_err=() h2_noted=()
live_targets=()
for target in "${targets[@]}"; do
    log "starting $target"
    if ! start_target "$target"; then
        log "  $target: n/a ($TARGET_ERR)"
        target_err[$target]="$TARGET_ERR"
        [[ -n "$TARGET_PID" ]] && stop_pid "$TARGET_PID"
        continue
    fi
    target_port[$target]="$TARGET_PORT" target_pid[$target]="$TARGET_PID" target_log[$target]="$TARGET_LOG"
    target_admin[$target]="$TARGET_ADMIN_PORT"
    target_tls_port[$target]="$TARGET_TLS_PORT" target_tls_err[$target]="$TARGET_TLS_ERR"
    if [[ "$target" != origin ]] && ! warm_all_urls "$TARGET_PORT"; then
        log "  $target: warming every URL once did not get 200 for all of them"
        notes+=("$target: warming every URL once did not get 200 for all of them")
    fi
    if [[ -n "$TARGET_TLS_PORT" ]]; then
        # Over TLS too: a cache whose key holds the port sees other URLs there.
        if [[ "$target" != origin ]] && ! warm_all_urls "$TARGET_TLS_PORT" https; then
            log "  $target: warming every URL once over TLS did not get 200 for all of them"
            notes+=("$target: warming every URL once over TLS did not get 200 for all of them")
        fi
        notes+=("$target: TLS listener on 127.0.0.1:$TARGET_TLS_PORT negotiates $(tls_cipher "$TARGET_TLS_PORT") with an OpenSSL client (as wrk's)")
    fi
    live_targets+=("$target")
done

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    # Each round starts one target further along the list.
    n=${#live_targets[@]}
    order=()
    for ((k = 0; k < n; k++)); do
        order+=("${live_targets[$(((k + round - 1) % n))]}")
    done
    log "round $round of $BENCH_ROUNDS: ${order[*]}"
    for scenario in "${scenarios[@]}"; do
        for target in "${order[@]}"; do
            if ! kill -0 "${target_pid[$target]}" 2>/dev/null; then
                record_na "$scenario" "$target" "$round" "server died"
                continue
            fi
            measure "$target" "$scenario" "$round"
        done
    done
done
for target in "${targets[@]}"; do
    if [[ -n "${target_err[$target]:-}" ]]; then
        for scenario in "${scenarios[@]}"; do
            record_na "$scenario" "$target" 1 "${target_err[$target]}"
        done
    fi
done
# Which tier answered the hits of the tiered targets (over the whole run, warm-up included).
for target in "${live_targets[@]}"; do
    [[ "$target" == cachet-l2-* && -n "${target_admin[$target]:-}" ]] || continue
    tier_hits="$(curl -fsS "http://127.0.0.1:${target_admin[$target]}/metrics" 2>/dev/null |
        awk '/^cachet_cache_tier_hits_total/ { match($0, /tier="[^"]*"/); t = substr($0, RSTART + 6, RLENGTH - 7); printf "%s%s %s", sep, t, $2; sep = ", " }')"
    notes+=("$target: lookups answered by tier over the run: ${tier_hits:-unknown}")
done
elapsed=$((SECONDS - started_at))

# ---- Report --------------------------------------------------------------------------

load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
version_of() { "$@" 2>&1 | head -n 1 | tr -d '\r'; }

# summarize SCENARIO: one table row per target, medians over the rounds.
summarize() {
    awk -F'\t' -v s="$1" -v order="${targets[*]}" '
        function median(list,    a, n, t, i, j) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
            if (n == 0) return ""
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function lo(list,    a, n, m, i) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
        function hi(list,    a, n, m, i) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
        function lat(us) { return (us < 1000) ? sprintf("%d µs", us) : sprintf("%.2f ms", us / 1000) }
        function spread(list, fmt, scale) {
            if (list == "") return "n/a"
            if (split(list, tmp, " ") == 1) return sprintf(fmt, median(list) * scale)
            return sprintf(fmt " (" fmt "–" fmt ")", median(list) * scale, lo(list) * scale, hi(list) * scale)
        }
        function latspread(list) {
            if (list == "") return "n/a"
            if (split(list, tmp, " ") == 1) return lat(median(list))
            return lat(median(list)) " (" lat(lo(list)) "–" lat(hi(list)) ")"
        }
        $1 == s && $2 == "origin" && $4 != "n/a" { origin[$3] = $4 }
        $1 == s && $4 != "n/a" { rows[$2, $3] = $0 }
        $1 == s { seen[$2] = 1 }
        END {
            n = split(order, targets, " ")
            for (k = 1; k <= n; k++) {
                t = targets[k]
                if (!(t in seen)) continue
                rps = ratio = p50 = p99 = cpu = hit = ""
                for (key in rows) {
                    split(key, kr, SUBSEP)
                    if (kr[1] != t) continue
                    split(rows[key], f, "\t")
                    rps = rps " " f[4]; p50 = p50 " " f[5]; p99 = p99 " " f[6]
                    if (f[7] != "n/a") cpu = cpu " " f[7]
                    if (f[8] != "n/a") hit = hit " " f[8]
                    if ((f[3] in origin) && origin[f[3]] > 0) ratio = ratio " " f[4] / origin[f[3]]
                }
                name = (t == "origin") ? "origin direct" : t
                printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", s, name,
                    spread(rps, "%.0f", 1), spread(ratio, "%.2f×", 1), latspread(p50), latspread(p99),
                    spread(cpu, "%.1f", 1), (hit == "") ? "—" : sprintf("%.1f%%", median(hit))
            }
        }' "$results"
}

report="$work/report.md"
{
    echo "# cachet cache-hit comparison, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- commit: $commit"
    echo "- machine: $(nproc) CPUs, ${model:-unknown model}, $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
    echo "- load: wrk -t$WRK_THREADS, $BENCH_ROUNDS interleaved rounds of ${BENCH_SECONDS}s per row after a ${BENCH_WARMUP}s warm-up; every server on 127.0.0.1 with $BENCH_SERVER_THREADS threads/workers, all running for the whole run"
    echo "- cachet: default configuration (access log on, appended to cachet.log beside its config; file watching on); fresh = instance_reuse 1 (the default), reuse = instance_reuse 1000000, builtin = builtin:standard"
    echo "- load average (1, 5, 15 min) before the run: $load_before; after: $load_after (the run itself adds up to about $((2 * WRK_THREADS)); more means other work shared the CPUs and the numbers are noisy)"
    echo "- tools: $(version_of wrk -v | cut -d' ' -f1-2); $(version_of "$(tool nginx)" -v | sed 's/.*: //')$(
        [[ -n "$(tool varnishd)" ]] && printf '; %s' "$(version_of "$(tool varnishd)" -V | sed -E 's/varnishd \((varnish-[^ ]+).*/\1/')")$(
        [[ -n "$(tool haproxy)" ]] && printf '; haproxy %s' "$(version_of "$(tool haproxy)" -v | awk '{ print $3 }')")$(
        ((tls_wanted)) && command -v openssl >/dev/null && printf '; %s' "$(version_of openssl version | cut -d' ' -f1-2)")$(
        ((h2_wanted)) && command -v h2load >/dev/null && printf '; %s' "$(version_of h2load --version)")"
    echo "- scenario: body size - distinct URLs (or miss: a new URL every request) - connections"
    echo "- every figure: median over the rounds (lowest–highest); ×origin: median of each round's ratio to origin direct in the same round"
    echo "- CPU µs/req: utime+stime of the server's processes (cachet; varnishd manager and child; nginx master and workers; haproxy) over the run ÷ requests; for cache targets the origin's CPU is not included"
    echo "- hit %: 1 − origin requests during the run ÷ requests served"
    if ((tls_wanted)); then
        echo "- tls-*: HTTPS with keep-alive (wrk, HTTP/1.1); h2-*: HTTP/2 by ALPN (h2load -c16 -m4: 64 streams in flight; p50/p99 from its per-request log); one ECDSA P-256 certificate made by openssl req for every TLS listener, TLS 1.3 only, the client's cipher order (the suite each negotiated is in the notes below); Varnish has no TLS listener"
    fi
    echo
    echo "| scenario | target | req/s | ×origin | p50 | p99 | CPU µs/req | hit % |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for scenario in "${scenarios[@]}"; do
        summarize "$scenario"
    done
    echo
    # Reasons for n/a rows and error counts, once per distinct message.
    {
        awk -F'\t' '$9 != "" { print "- " $2 ($4 == "n/a" ? "" : " (" $1 ", round " $3 ")") ": " $9 }' "$results"
        for n in "${notes[@]}"; do
            echo "- $n"
        done
    } | awk '!seen[$0]++' | head -n 40
    echo
    echo "Run took ${elapsed}s."
} >"$report"

cat "$report"

mkdir -p "$bench_dir/results"
saved="$bench_dir/results/compare-$(date +%Y%m%d-%H%M%S).md"
cp "$report" "$saved" && log "saved $saved"
