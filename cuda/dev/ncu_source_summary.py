"""Summarizes Nsight Compute's per-instruction warp-state samples of one kernel.

Input: the CSV of ``ncu --import REPORT --page source --csv --print-source sass`` for a
report taken with ``--section SourceCounters --section WarpStateStats`` (one launch). A
sample falls on the instruction a warp is waiting to issue, so the instructions with the
most samples say what the warps wait for: WARPGROUP.DEPBAR for wgmma results, BAR.SYNC for
a named barrier, SYNCS.PHASECHK for an mbarrier (TMA data, a stage handed back), the
instruction after a shared-memory load for that load.

Prints: the columns found; samples by how often an instruction ran (a warp role and a
loop level each have their own count: per tile per consumer warp, per KV block, ...);
the instructions with the most samples, with their SASS; and, for the most-sampled
execution count, samples by opcode. Stall-reason columns, where the CSV has them, are
summed too.

usage: python cuda/dev/ncu_source_summary.py source.csv [--top 40]
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import re
import sys


def number(text: str) -> float:
    text = (text or "").replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return 0.0


def read_rows(path: str):
    """The header and rows of the source table (lines before the header are skipped)."""
    with open(path, newline="", errors="replace") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if "Address" in line and "Source" in line), None)
    if start is None:
        raise SystemExit(f"{path}: no header with 'Address' and 'Source' (is it ncu --page source --csv output?)")
    reader = csv.reader(io.StringIO("\n".join(lines[start:])))
    header = next(reader)
    rows = [r for r in reader if len(r) == len(header)]
    return header, rows


def column(header, *needles, exclude=()):
    for i, name in enumerate(header):
        low = name.lower()
        if all(n in low for n in needles) and not any(x in low for x in exclude):
            return i
    return None


def opcode(sass: str) -> str:
    text = re.sub(r"^\s*@!?U?P[T0-9]+\s+", "", sass.strip())
    return text.split(" ")[0].rstrip(";") if text else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    header, rows = read_rows(args.csv)
    c_addr, c_src = column(header, "address"), column(header, "source")
    c_all = column(header, "sampling", "all")
    c_noissue = column(header, "sampling", "not")
    c_exec = column(header, "instructions executed", exclude=("thread", "predicated"))
    if c_all is None or c_exec is None:
        raise SystemExit(f"no sample or execution column in {header}")
    reasons = [i for i, name in enumerate(header) if "stall" in name.lower() and i not in (c_all, c_noissue)]
    print("columns:", "; ".join(header))
    total = sum(number(r[c_all]) for r in rows) or 1.0
    print(f"{len(rows)} SASS instructions, {total:.0f} samples"
          + (f", {sum(number(r[c_noissue]) for r in rows):.0f} not issued" if c_noissue is not None else ""))

    by_exec = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for r in rows:
        e = number(r[c_exec])
        by_exec[e][0] += 1
        by_exec[e][1] += e
        by_exec[e][2] += number(r[c_all])
    print("\nsamples by execution count (warp-level):")
    for e, (n, issued, s) in sorted(by_exec.items(), key=lambda kv: -kv[1][2])[:10]:
        print(f"  executed {e:12,.0f} times: {n:5d} instructions, {issued:16,.0f} issued, {100 * s / total:5.1f}% of samples")

    if reasons:
        print("\nsamples by stall reason (all instructions):")
        sums = {header[i]: sum(number(r[i]) for r in rows) for i in reasons}
        for name, s in sorted(sums.items(), key=lambda kv: -kv[1]):
            if s > 0:
                print(f"  {name:60s} {s:10.0f} {100 * s / total:5.1f}%")

    print(f"\nthe {args.top} instructions with the most samples:")
    for r in sorted(rows, key=lambda r: -number(r[c_all]))[: args.top]:
        s = number(r[c_all])
        extra = ""
        if reasons:
            top = sorted(((number(r[i]), header[i]) for i in reasons), reverse=True)[:3]
            extra = "  [" + ", ".join(f"{name} {v:.0f}" for v, name in top if v > 0) + "]"
        print(f"  {r[c_addr]:>8s} x{number(r[c_exec]):11,.0f} {100 * s / total:5.1f}%  {r[c_src].strip()[:90]}{extra}")

    e_top = max(by_exec.items(), key=lambda kv: kv[1][2])[0]
    ops = collections.Counter()
    for r in rows:
        if number(r[c_exec]) == e_top:
            ops[opcode(r[c_src])] += number(r[c_all])
    print(f"\nsamples by opcode, instructions executed {e_top:,.0f} times:")
    for op, s in ops.most_common(20):
        print(f"  {op:32s} {100 * s / total:5.1f}%")


if __name__ == "__main__":
    sys.exit(main())
