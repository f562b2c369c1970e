"""PNG plots of a sweep CSV (experiments/sweep.py), and the model's error.

    python experiments/plot.py experiments/results/sweep_cpu.csv [--out FOLDER] [--prefix sweep_cpu]

Writes ``<prefix>_time_vs_lkv.png`` (forward+backward ms vs Lkv per algorithm at the
largest P), ``<prefix>_speedup.png`` (ring / lvx time vs Lkv·Hkv / (Lq·Hq)),
``<prefix>_scaling.png`` (strong and weak scaling vs P) and
``<prefix>_predicted.png`` (measured vs predicted, ±20 % band), and prints the
distribution of |predicted − measured| / measured. Plots without data are skipped.
A point measured twice (the CSV is appended to) counts with its last row. The PNGs
go to a new folder under experiments/results/new/ unless ``--out`` names one; a
committed PNG is never overwritten.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from collections import defaultdict

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import new_results_path, refuse_committed  # noqa: E402

MARKERS = {"lvx": "o", "ring": "s", "ulysses": "^"}
POINT_KEY = ("P", "scaling", "requested", "transport", "dtype", "Lq", "Lkv", "Hq", "Hkv", "D", "device")
INTS = ("P", "Lq", "Lkv", "Hq", "Hkv", "D", "B")
FLOATS = ("fwd_ms", "bwd_ms", "fwdbwd_ms", "pred_fwd_ms", "pred_bwd_ms")


def read_rows(path: str) -> list[dict]:
    last = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k in INTS:
                row[k] = int(row[k])
            for k in FLOATS:
                row[k] = float(row[k])
            last[tuple(row[k] for k in POINT_KEY)] = row
    return list(last.values())


def errors(rows: list[dict]) -> dict:
    """|pred − meas| / meas per phase: {phase: sorted list}."""
    out = {"fwd": [], "bwd": [], "fwdbwd": []}
    for r in rows:
        pred = {"fwd": r["pred_fwd_ms"], "bwd": r["pred_bwd_ms"], "fwdbwd": r["pred_fwd_ms"] + r["pred_bwd_ms"]}
        for phase, p in pred.items():
            out[phase].append(abs(p - r[f"{phase}_ms"]) / r[f"{phase}_ms"])
    return {k: sorted(v) for k, v in out.items()}


def summary(errs: list[float]) -> str:
    if not errs:
        return "no points"
    within = sum(e <= 0.2 for e in errs) / len(errs)
    return (f"median {100 * statistics.median(errs):.1f}%, max {100 * max(errs):.1f}%, "
            f"within 20%: {100 * within:.0f}% of {len(errs)}")


def _shape_label(r: dict) -> str:
    return f"Lq={r['Lq']} H={r['Hq']}/{r['Hkv']} D={r['D']} {r['dtype']} {r['transport']}"


def plot_time_vs_lkv(rows, path) -> bool:
    strong = [r for r in rows if r["scaling"] == "strong" and r["requested"] != "auto"]
    if not strong:
        return False
    P = max(r["P"] for r in strong)
    groups = defaultdict(list)
    for r in strong:
        if r["P"] == P:
            groups[_shape_label(r)].append(r)
    groups = {k: v for k, v in groups.items() if len({r["Lkv"] for r in v}) > 1}
    if not groups:
        return False
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.8), squeeze=False)
    for ax, (label, rs) in zip(axes[0], sorted(groups.items())):
        for alg in sorted({r["algorithm"] for r in rs}):
            pts = sorted((r["Lkv"], r["fwdbwd_ms"], r["pred_fwd_ms"] + r["pred_bwd_ms"]) for r in rs
                         if r["algorithm"] == alg)
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=MARKERS.get(alg, "x"), label=alg)
            ax.plot([p[0] for p in pts], [p[2] for p in pts], ls=":", color=line.get_color())
        ax.set(xscale="log", yscale="log", xlabel="Lkv (global)", ylabel="forward+backward ms", title=label)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.title.set_fontsize(8)
        ax.legend(fontsize=8, title="dotted: predicted", title_fontsize=7)
    fig.suptitle(f"time vs visual length, P={P}, {rows[0]['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_speedup(rows, path) -> bool:
    by = defaultdict(dict)
    for r in rows:
        if r["requested"] in ("lvx", "ring"):
            key = tuple(r[k] for k in POINT_KEY if k != "requested")
            by[key][r["requested"]] = r
    pts = defaultdict(list)
    for key, d in by.items():
        if "lvx" in d and "ring" in d and d["lvx"]["P"] > 1:
            r = d["lvx"]
            ratio = r["Lkv"] * r["Hkv"] / (r["Lq"] * r["Hq"])
            pts[f"P={r['P']} {r['transport']} {r['dtype']}"].append(
                (ratio, d["ring"]["fwdbwd_ms"] / r["fwdbwd_ms"],
                 (d["ring"]["pred_fwd_ms"] + d["ring"]["pred_bwd_ms"]) / (r["pred_fwd_ms"] + r["pred_bwd_ms"])))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, ps in sorted(pts.items()):
        ps.sort()
        sc = ax.scatter([p[0] for p in ps], [p[1] for p in ps], label=label, s=18)
        ax.scatter([p[0] for p in ps], [p[2] for p in ps], marker="_", s=60, color=sc.get_facecolor()[0])
    ax.axhline(1.0, color="gray", lw=0.8)
    ys = [p[i] for ps in pts.values() for p in ps for i in (1, 2)]
    if max(ys) / min(ys) > 20:  # a slow transport next to a fast one: ratios span decades
        ax.set_yscale("log")
    ax.set(xscale="log", xlabel="Lkv·Hkv / (Lq·Hq)", ylabel="ring time / lvx time (fwd+bwd)",
           title=f"LV-XAttn speedup over Ring, {rows[0]['device']}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, title="dash: predicted", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def transport_family(transport: str) -> str:
    """"mpi (host-staged)" and "mpi (CUDA-aware)" are both "mpi"."""
    return transport.split(" ")[0]


def plot_scaling(rows, path) -> bool:
    panels = []
    for scaling in ("strong", "weak"):
        groups = defaultdict(list)
        for r in rows:
            if r["scaling"] == scaling and r["requested"] != "auto":
                per = (r["Lq"] // r["P"], r["Lkv"] // r["P"]) if scaling == "weak" else (r["Lq"], r["Lkv"])
                # The transport family is in the key; at P = 1 there is none, so that
                # point starts every family's line.
                families = [transport_family(r["transport"])] if r["P"] > 1 else \
                    {transport_family(x["transport"]) for x in rows if x["P"] > 1} or {"none"}
                for fam in families:
                    groups[(per, r["Hq"], r["Hkv"], r["D"], r["dtype"], r["algorithm"], fam)].append(r)
        counts = {k: len({r["P"] for r in v}) for k, v in groups.items()}
        most = max(counts.values(), default=0)
        groups = {k: v for k, v in groups.items() if counts[k] == most and most > 1}
        if groups:
            panels.append((scaling, groups))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (scaling, groups) in zip(axes[0], panels):
        for (per, hq, hkv, d, dt, alg, fam), rs in sorted(groups.items()):
            rs.sort(key=lambda r: r["P"])
            what = "per rank " if scaling == "weak" else ""
            ax.plot([r["P"] for r in rs], [r["fwdbwd_ms"] for r in rs], marker=MARKERS.get(alg, "x"),
                    label=f"{alg} {what}{per[0]}x{per[1]} H{hq}/{hkv} {fam}")
        if scaling == "strong":
            ax.set(yscale="log")
        ax.set(xlabel="P (ranks)", ylabel="forward+backward ms", title=f"{scaling} scaling")
        ax.set_xticks(sorted({r["P"] for rs in groups.values() for r in rs}))
        ax.legend(fontsize=6)
    fig.suptitle(rows[0]["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_predicted(rows, path) -> bool:
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for alg in sorted({r["algorithm"] for r in rows}):
        rs = [r for r in rows if r["algorithm"] == alg]
        ax.scatter([r["fwdbwd_ms"] for r in rs], [r["pred_fwd_ms"] + r["pred_bwd_ms"] for r in rs],
                   marker=MARKERS.get(alg, "x"), s=18, label=alg)
    lo = min(min(r["fwdbwd_ms"], r["pred_fwd_ms"] + r["pred_bwd_ms"]) for r in rows) * 0.8
    hi = max(max(r["fwdbwd_ms"], r["pred_fwd_ms"] + r["pred_bwd_ms"]) for r in rows) * 1.25
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
    ax.fill_between([lo, hi], [0.8 * lo, 0.8 * hi], [1.2 * lo, 1.2 * hi], color="gray", alpha=0.15, label="±20%")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured fwd+bwd ms",
           ylabel="predicted fwd+bwd ms", title=f"cost model, {rows[0]['device']}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--out", default="", help="folder of the PNGs (default: a new one under experiments/results/new/)")
    ap.add_argument("--prefix", default="", help="file name prefix (default: the CSV's name)")
    args = ap.parse_args(argv)
    rows = read_rows(args.csv)
    prefix = args.prefix or os.path.splitext(os.path.basename(args.csv))[0]
    out = args.out or new_results_path(f"plots_{prefix}", ext="")
    os.makedirs(out, exist_ok=True)
    written = []
    for name, fn in (("time_vs_lkv", plot_time_vs_lkv), ("speedup", plot_speedup), ("scaling", plot_scaling),
                     ("predicted", plot_predicted)):
        path = os.path.join(out, f"{prefix}_{name}.png")
        refuse_committed(path)
        if fn(rows, path):
            written.append(path)
    errs = errors(rows)
    print(f"{len(rows)} points; |predicted - measured| / measured:")
    for phase in ("fwd", "bwd", "fwdbwd"):
        print(f"  {phase:7s} {summary(errs[phase])}")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
