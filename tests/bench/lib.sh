# What profile.sh and ab.sh share, sourced by both (not run): a free loopback port, the
# origin, a certificate, one cachet under a benchmark config, the 1000 objects filled in,
# the paths wrk asks for, and a process's CPU. (compare.sh keeps its own helpers: it sets
# up other servers the same way and reports through its own variables.)

# A port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_origin PORT BODY_BYTES LOG: the origin (origin.py) in the background; `$!` is its PID.
start_origin() {
    python3 "$(dirname "${BASH_SOURCE[0]}")/origin.py" "$1" "$2" >"$3" 2>&1 &
}

# make_certificate DIR: an ECDSA P-256 certificate for 127.0.0.1, DIR/cert.pem and DIR/key.pem.
make_certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
        -keyout "$1/key.pem" -out "$1/cert.pem" >"$1/openssl.log" 2>&1
}

# tls_lines PORT DIR: the `[server]` lines of a TLS listener on PORT with make_certificate's
# files in DIR.
tls_lines() {
    printf 'tls_listen = "127.0.0.1:%s"\ntls_cert = "%s/cert.pem"\ntls_key = "%s/key.pem"\n' \
        "$1" "$2" "$2"
}

# write_config FILE PORT ADMIN_PORT THREADS SERVER_LINES CACHE_LINES ORIGIN_PORT PLUGIN REUSE:
# one tenant for every host in front of the origin; SERVER_LINES and CACHE_LINES go into
# `[server]` and after `[cache]` (its own keys first, then any `[cache.*]` tables);
# compiled plugins are kept beside FILE.
write_config() {
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
threads = $4
$5

[cache]
$6

[plugins]
artifact_cache_dir = "$(dirname "$1")/artifacts"

[[tenant]]
name = "bench"
hosts = ["*"]
upstream = "127.0.0.1:$7"
plugin = "$8"

[tenant.limits]
instance_reuse = $9
EOF
}

# start_cachet BIN CONFIG ADMIN_PORT: cachet in the background as a user first runs it (its
# log beside the config, in the watched folder); `CACHET_PID` is its PID, also added to the
# caller's `pids` (what its cleanup stops). Fails, naming the log's last lines, when /status
# does not answer within 20 s or the process ends.
start_cachet() {
    local log
    log="$(dirname "$2")/cachet.log"
    "$1" serve --config "$2" </dev/null >/dev/null 2>>"$log" &
    CACHET_PID=$!
    pids+=("$CACHET_PID")
    for _ in $(seq 100); do
        curl -fso /dev/null "http://127.0.0.1:$3/status" && return 0
        kill -0 "$CACHET_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "cachet did not start: $(tail -n 3 "$log")" >&2
    return 1
}

# fill BASE_URL SUFFIX DIR: requests BASE_URL/obj/<i>SUFFIX for i in 0..999 once (16 at a
# time), so every object is cached.
fill() {
    for i in $(seq 0 999); do echo "url = \"${1}obj/$i$2\""; echo "output = /dev/null"; done >"$3/urls"
    curl -sk --parallel --parallel-max 16 -K "$3/urls" >/dev/null 2>&1
}

# list_urls BASE_URL SUFFIX FILE: the same 1000 URLs, one a line, for h2load.
list_urls() {
    for i in $(seq 0 999); do echo "${1}obj/$i$2"; done >"$3"
}

# write_paths_lua FILE SUFFIX: a wrk script walking /obj/<i>SUFFIX over the 1000 objects,
# printing REQUESTS and P99_US at the end.
write_paths_lua() {
    cat >"$1" <<EOF
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/obj/" .. (i % 1000) .. "$2")
end
done = function(summary, latency, requests)
    io.write(string.format("REQUESTS %d\\nP99_US %d\\n", summary.requests, latency:percentile(99)))
end
EOF
}

# process_cpu_ticks PID: user + system CPU of the process so far, in clock ticks (the fields
# after the command name, which may hold spaces).
process_cpu_ticks() {
    stat_cpu_ticks "/proc/$1/stat"
}

# stat_cpu_ticks FILE: user + system CPU in clock ticks from a process's or a thread's `stat`.
stat_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$1"
}

# thread_counters PID: a line per thread of the process so far, "TID CPU VOLUNTARY
# INVOLUNTARY": its CPU in clock ticks and its context switches (it slept; it was preempted).
# A thread that ends while it is read is left out.
thread_counters() {
    local task cpu voluntary involuntary
    for task in /proc/"$1"/task/*; do
        cpu="$(stat_cpu_ticks "$task/stat" 2>/dev/null)" || continue
        voluntary="$(awk '/^voluntary_ctxt_switches/ {print $2}' "$task/status" 2>/dev/null)" || continue
        involuntary="$(awk '/^nonvoluntary_ctxt_switches/ {print $2}' "$task/status" 2>/dev/null)" || continue
        echo "${task##*/} $cpu $voluntary $involuntary"
    done
}
