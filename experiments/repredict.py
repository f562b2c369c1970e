"""Recompute the predicted columns of a sweep CSV with the current cost model.

A prediction is a pure function of the calibration (kernel step costs, bandwidth,
latency) and the model in ``src/cost_model.cpp``. Given the calibration cache a
sweep ran with (``$LVX_CACHE_DIR/calibration-<host>-<device>.json``), this writes the
CSV again (to a new file unless ``--out`` says where) with ``pred_fwd_ms``/``pred_bwd_ms``
from the model as it is now; the values the run printed are kept as
``pred_fwd_ms_run``/``pred_bwd_ms_run``. It prints the error distribution
(|predicted − measured| / measured of forward+backward). Shards as the sweep made
them (``lvxattn.sharding.even_counts``).

    python experiments/repredict.py experiments/results/sweep_gpu.csv \\
        --calibration experiments/results/calibration_gpu_h200x4_2026-11-28.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import git_sha, new_results_path, refuse_committed  # noqa: E402
from lvxattn import _core, calibrate  # noqa: E402
from lvxattn.sharding import even_counts  # noqa: E402



def entry_for(cache: dict, row: dict) -> dict:
    """The calibration entry the sweep used for this row's (transport, dtype, P)."""
    transport = "mpi" if row["transport"].startswith("mpi") else "nccl"
    P = int(row["P"])
    wanted = [f"{row['dtype']}:", f"ranks_per_node={P}:"]
    candidates = [v for k, v in cache.items() if all(w in k for w in wanted)]
    exact = [v for v in candidates if f":{transport}:" in v["key"]]
    if not (exact or candidates):
        raise SystemExit(f"no calibration entry for dtype {row['dtype']}, P={P}, transport {transport}")
    return (exact or candidates)[0]


def predict(row: dict, cal: dict) -> tuple[float, float]:
    """Forward and backward seconds of the slowest rank (as sweep.py predicts)."""
    P = int(row["P"])
    lq, lkv = even_counts(int(row["Lq"]), P), even_counts(int(row["Lkv"]), P)
    fwd = bwd = 0.0
    for rank in range(P):
        plan = _core.Plan(lq, lkv, rank=rank, B=int(row["B"]), Hq=int(row["Hq"]), Hkv=int(row["Hkv"]),
                          D=int(row["D"]), dtype=calibrate.core_dtype(row["dtype"]),
                          lvx_form=row.get("lvx_form") or "ring")
        p = plan.predict(row["algorithm"], calibrate.cost_params(cal))
        fwd, bwd = max(fwd, p["forward_s"]), max(bwd, p["backward_s"])
    return fwd, bwd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--calibration", required=True, help="the calibration cache the sweep ran with")
    ap.add_argument("--out", help="output CSV (default: a new file under experiments/results/new/)")
    args = ap.parse_args(argv)
    with open(args.calibration) as f:
        cache = json.load(f)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    sha = git_sha()
    errors = []
    for row in rows:
        if "pred_fwd_ms_run" not in row:
            row["pred_fwd_ms_run"], row["pred_bwd_ms_run"] = row["pred_fwd_ms"], row["pred_bwd_ms"]
        fwd, bwd = predict(row, entry_for(cache, row))
        row["pred_fwd_ms"], row["pred_bwd_ms"] = f"{fwd * 1e3:.6g}", f"{bwd * 1e3:.6g}"
        row["pred_model_sha"] = sha
        measured = float(row["fwd_ms"]) + float(row["bwd_ms"])
        errors.append(((fwd + bwd) * 1e3 - measured) / measured)
    fields = list(rows[0].keys())
    out = args.out or new_results_path(os.path.splitext(os.path.basename(args.csv))[0] + "_repredicted")
    refuse_committed(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    size = sorted(abs(e) for e in errors)
    print(f"{len(errors)} points: median |error| {100 * statistics.median(size):.1f}%, "
          f"90th percentile {100 * size[int(0.9 * (len(size) - 1))]:.1f}%, max {100 * size[-1]:.0f}%; "
          f"within 10%: {sum(e <= 0.1 for e in size)}, within 20%: {sum(e <= 0.2 for e in size)}; "
          f"signed median {100 * statistics.median(errors):+.1f}%")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
