#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel (short name and grid):
calls, total and mean time, share of the kernels' total; the heaviest first.

    python bench/ncu_summary.py ncu.csv[.gz] [--top 40] [--min-calls N]

ncu serializes kernels (no overlap, no launch gaps), so the totals are the kernels' own time.
"""
import argparse
import collections
import csv
import gzip
import io
import re


def short_name(name):
    name = re.sub(r"\(.*\)$", "", name)               # parameter list
    name = re.sub(r"^void ", "", name)
    return re.sub(r"moxin::(<unnamed>::|cuda::)*", "", name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--min-calls", type=int, default=1)
    args = parser.parse_args()
    opener = gzip.open if args.csv.endswith(".gz") else open
    with opener(args.csv, "rt", errors="replace") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        print("no ncu CSV rows found")
        return
    totals = collections.defaultdict(lambda: [0, 0.0])
    for row in csv.DictReader(io.StringIO("\n".join(lines[start:]))):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        ns = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        ns *= {"ns": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}.get(unit, 1)
        key = (short_name(row["Kernel Name"]), row["Grid Size"], row["Block Size"])
        totals[key][0] += 1
        totals[key][1] += ns
    grand = sum(t for _, t in totals.values())
    print(f"{len(totals)} kernel shapes, {sum(c for c, _ in totals.values())} launches, {grand / 1e6:.3f} ms in kernels")
    print(f"{'calls':>6s} {'total ms':>9s} {'mean us':>8s} {'share':>6s}  kernel [grid] (block)")
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][1])
    for (name, grid, block), (calls, ns) in [kv for kv in ranked if kv[1][0] >= args.min_calls][: args.top]:
        print(f"{calls:6d} {ns / 1e6:9.3f} {ns / calls / 1e3:8.2f} {100 * ns / grand:5.1f}%  {name} {grid} {block}")


if __name__ == "__main__":
    main()
