"""COUNT GETs of /obj/<i % 1000> for i from START, one after another on one keep-alive
connection to 127.0.0.1:PORT; fails unless every answer is a 200 cache hit. Prints the
count. Used by instructions.sh, where the proxy runs under valgrind and wrk's load would
only queue.

usage: keepalive_hits.py PORT START COUNT
"""
import socket
import sys

port, start, count = (int(a) for a in sys.argv[1:4])
conn = socket.create_connection(("127.0.0.1", port), timeout=120)
pending = b""


def read_answer():
    global pending
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        if not chunk:
            sys.exit("keepalive_hits.py: the proxy closed the connection")
        pending += chunk
    head, _, rest = pending.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields.get("content-length", "0"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            sys.exit("keepalive_hits.py: the body was cut short")
        rest += chunk
    pending = rest[length:]
    return lines[0], fields


for i in range(start, start + count):
    # The host as curl names it when instructions.sh fills the cache: the same key.
    conn.sendall(b"GET /obj/%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: keepalive_hits\r\n"
                 b"Accept: */*\r\n\r\n" % (i % 1000, port))
    status, fields = read_answer()
    if not status.startswith("HTTP/1.1 200"):
        sys.exit(f"keepalive_hits.py: /obj/{i % 1000} answered {status}")
    if not fields.get("cache-status", "").lower().startswith("cachet; hit"):
        sys.exit(f"keepalive_hits.py: /obj/{i % 1000} was not a hit: {fields.get('cache-status')}")
print(count)
