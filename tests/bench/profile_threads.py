"""Per-thread CPU and context switches of cachet during profile.sh's measured load.

Reads two snapshots (`tid|name|ticks|voluntary|involuntary` lines, before and after the
load) and prints, per thread name (threads of one name summed), CPU µs and context
switches per 1000 requests. Voluntary switches are a thread going to sleep (nothing to
do, or waiting on a lock), involuntary ones a thread preempted while it had work.
"""

import sys
from collections import defaultdict


def read(path):
    threads = {}
    with open(path) as lines:
        for line in lines:
            fields = line.rstrip("\n").split("|")
            if len(fields) != 5 or not all(fields[i].isdigit() for i in (2, 3, 4)):
                continue  # a thread that ended while being read
            tid, name, ticks, voluntary, involuntary = fields
            threads[tid] = (name, int(ticks), int(voluntary), int(involuntary))
    return threads


def main():
    before, after = read(sys.argv[1]), read(sys.argv[2])
    requests, hz = int(sys.argv[3]), int(sys.argv[4])
    if requests <= 0:
        return
    by_name = defaultdict(lambda: [0, 0, 0, 0])
    for tid, (name, ticks, voluntary, involuntary) in after.items():
        _, ticks0, voluntary0, involuntary0 = before.get(tid, (name, 0, 0, 0))
        row = by_name[name]
        row[0] += 1
        row[1] += ticks - ticks0
        row[2] += voluntary - voluntary0
        row[3] += involuntary - involuntary0
    print()
    print("| thread | count | CPU µs/request | sleeps per 1000 requests | preemptions per 1000 requests |")
    print("|---|---:|---:|---:|---:|")
    for name, (count, ticks, voluntary, involuntary) in sorted(
        by_name.items(), key=lambda item: (-item[1][1], -item[1][2], item[0])
    ):
        if ticks == 0 and voluntary == 0 and involuntary == 0:
            continue
        print(
            f"| {name} | {count} | {ticks / hz * 1e6 / requests:.1f} "
            f"| {voluntary * 1000 / requests:.1f} | {involuntary * 1000 / requests:.1f} |"
        )


main()
