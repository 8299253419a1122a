-- wrk script for tests/bench/compare.sh: chooses the request path and prints
-- a machine-readable summary line when the run ends.
--
-- Arguments (after `--` on the wrk command line):
--   1  mode    "one"    always /obj/0/<size>
--              "rotate" /obj/<i % count>/<size>, i counting up per thread
--              "miss"   /obj/<counter>-<thread><tag>/<size>, never repeating
--   2  size    "1k" or "64k" (the origin's file names)
--   3  count   number of distinct URLs for "rotate"
--   4  tag     suffix that keeps the paths of one run (e.g. a warm-up)
--              apart from another's in "miss" mode
--
-- Each wrk thread has its own Lua state: the globals below are per thread.

local next_thread_id = 0

-- Runs in the main state once per thread before it starts: numbers threads.
function setup(thread)
    thread:set("thread_id", next_thread_id)
    next_thread_id = next_thread_id + 1
end

local mode, size, count, tag
local prepared = {}
local position = 0
local counter = 0

function init(args)
    mode = args[1] or "one"
    size = args[2] or "1k"
    count = tonumber(args[3] or "1000")
    tag = args[4] or ""
    local id = thread_id or 0
    if mode == "rotate" then
        -- Format every request once; request() then only indexes a table.
        for n = 0, count - 1 do
            prepared[n] = wrk.format(nil, "/obj/" .. n .. "/" .. size)
        end
        -- Threads start half a cycle apart so they do not walk in step.
        position = (id * math.floor(count / 2)) % count
    elseif mode == "one" then
        prepared[0] = wrk.format(nil, "/obj/0/" .. size)
    end
end

function request()
    if mode == "rotate" then
        local r = prepared[position]
        position = position + 1
        if position >= count then
            position = 0
        end
        return r
    elseif mode == "miss" then
        counter = counter + 1
        return wrk.format(nil, "/obj/" .. counter .. "-" .. (thread_id or 0) .. tag .. "/" .. size)
    end
    return prepared[0]
end

-- Runs in the main state after the run. Latencies are in microseconds.
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d " ..
        "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
        summary.requests, summary.duration,
        latency:percentile(50), latency:percentile(99),
        e.connect, e.read, e.write, e.status, e.timeout))
end
