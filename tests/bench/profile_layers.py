"""Groups `perf report --no-children --sort dso,sym --field-separator='|'` lines by layer
for profile.sh.

Reads the report on stdin; argument 1 is the process's CPU µs per request, which
each layer's share is converted into. Prints a Markdown table per layer and the
hottest symbols of each layer.
"""

import re
import sys
from collections import defaultdict

# `perf report --field-separator='|'`: "  2.62%  |[kernel.kallsyms]|[k] symbol"
LINE = re.compile(r"^\s*([\d.]+)%\s*\|(.*?)\|\[(.)\]\s+(.*)$")
CRATE = re.compile(r"^[<&*\s]*(?:mut\s+|dyn\s+)?([A-Za-z_][A-Za-z0-9_]*)")

LAYERS = [
    ("kernel", "syscalls, TCP, scheduling, page faults"),
    ("plugin", "the policy's own compiled WebAssembly"),
    ("wasmtime", "instantiation, pool slots, component calls, host functions' glue"),
    ("cachet", "cachet's own Rust code"),
    ("pingora", "HTTP parsing and writing, proxy phases, pingora-cache"),
    ("tokio", "async runtime"),
    ("alloc+libc", "malloc/free, memcpy/memset, other libc"),
    ("other", "http, bytes, tracing, hashing and the rest"),
]


def layer_of(dso: str, kind: str, symbol: str) -> str:
    if kind == "k":
        return "kernel"
    dso = dso.strip()
    if dso.startswith("[JIT]") or dso.startswith("perf-") or dso == "[unknown]":
        return "plugin"
    if dso.startswith("libc") or dso.startswith("ld-linux") or "malloc" in symbol:
        return "alloc+libc"
    match = CRATE.match(symbol)
    crate = match.group(1) if match else ""
    if crate.startswith("wasmtime") or crate.startswith("cranelift"):
        return "wasmtime"
    if crate in ("cachet", "cachet_sdk"):
        return "cachet"
    if crate.startswith("pingora"):
        return "pingora"
    if crate == "tokio":
        return "tokio"
    if crate in ("core", "alloc", "std") and ("alloc" in symbol or "mem" in symbol):
        return "alloc+libc"
    return "other"


def main() -> None:
    cpu_us = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    shares = defaultdict(float)
    symbols = defaultdict(list)
    for line in sys.stdin:
        found = LINE.match(line)
        if not found:
            continue
        percent, dso, kind, symbol = found.groups()
        share = float(percent)
        layer = layer_of(dso, kind, symbol)
        shares[layer] += share
        symbols[layer].append((share, symbol.strip()[:110]))
    total = sum(shares.values()) or 1.0
    print()
    print("| layer | share | µs/request | what |")
    print("|---|---:|---:|---|")
    for layer, what in LAYERS:
        share = shares[layer] / total
        print(f"| {layer} | {share * 100:.1f}% | {share * cpu_us:.1f} | {what} |")
    for layer, _ in LAYERS:
        if not symbols[layer]:
            continue
        print(f"\n## {layer}: hottest symbols (share of all samples)")
        for share, symbol in sorted(symbols[layer], reverse=True)[:10]:
            print(f"  {share / total * 100:5.1f}%  {symbol}")


main()
