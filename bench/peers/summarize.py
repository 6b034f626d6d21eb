#!/usr/bin/env python3
"""Turn results JSONL (from bench_inproc.py / loadgen.py) into markdown tables.
Usage: python summarize.py /tmp/peers/results/inproc.jsonl /tmp/peers/results/peers.jsonl > RESULTS.md
"""

import json
import sys


def rows(paths):
    for p in paths:
        with open(p) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


INPROC_COLUMNS = {
    "in-process": "label",
    "batch": "batch",
    "sent/call": "chunk",
    "sent/s": "sent_per_s",
    "calls/s": "calls_per_s",
    "p50 ms": "p50_ms",
    "p95 ms": "p95_ms",
    "p99 ms": "p99_ms",
    "CPU%": "cpu_pct",
    "peak RSS MB": "peak_rss_mb",
}
SERVER_COLUMNS = {
    "server": "label",
    "sent/req": "batch",
    "conc": "concurrency",
    "sent/s": "sent_per_s",
    "req/s": "req_per_s",
    "p50 ms": "p50_ms",
    "p95 ms": "p95_ms",
    "p99 ms": "p99_ms",
    "errors": "errors",
    "server CPU%": "server_cpu_pct",
    "client CPU%": "client_cpu_pct",
    "server peak RSS MB": "server_peak_rss_mb",
    "server PSS MB": "server_pss_mb",
}


def table(rows, columns):
    """A markdown table: the first column left-aligned, the numbers right-aligned."""
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for r in rows:
        print("| " + " | ".join(str(r[key]) for key in columns.values()) + " |")
    print()


def main():
    inproc, server, other = [], [], []
    for r in rows(sys.argv[1:]):
        if "engine" in r:
            inproc.append(r)
        elif "concurrency" in r:
            server.append(r)
        else:
            other.append(r)
    if inproc:
        for r in inproc:
            r.setdefault("chunk", r["batch"])
        table(inproc, INPROC_COLUMNS)
    if server:
        table(server, SERVER_COLUMNS)
    for r in other:
        print("- " + json.dumps(r))


if __name__ == "__main__":
    main()
