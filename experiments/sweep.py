"""Scaling sweep: a TOML grid of (P, Lq, Lkv, heads, D, algorithm, transport, dtype),
measured and predicted, appended to CSV.

    mpirun -n 4 python experiments/sweep.py experiments/configs/cpu.toml
    mpirun -n 4 python3 experiments/sweep.py experiments/configs/gpu.toml --device cuda

Under N ranks every P <= N of the grid runs on the first P ranks (a sub-communicator
from ``comm.Split``); the other ranks wait in a barrier that sleeps. For each P,
transport and dtype the cost model is calibrated on that sub-communicator
(``lvxattn.calibrate``, cached per machine) and given to its contexts, so
``algorithm = "auto"`` can be swept as well. Each point is timed like
``bench_dist.py`` (warm-up, then the median over repeats of the slowest rank's
forward and backward) and predicted with ``lvxattn._core.Plan.predict`` (the calibrated
step costs of each phase). Rank 0 prints a table and
appends one CSV row per point, with the git sha, date, device, MPI library,
transport, shapes, measured and predicted times and bytes (max over ranks).

Config (TOML): top-level keys are defaults for every ``[[grid]]`` table; each grid
is the product of its lists. Keys: ``P``, ``Lq``, ``Lkv`` (global lengths, or per
rank with ``weak = true``), ``heads`` (list of [Hq, Hkv]), ``D``, ``algorithms``,
``transports``, ``dtypes``; scalars ``repeats``, ``warmup``, ``threads``,
``device``, ``csv`` (default: a new file under experiments/results/new/ named after
``name``), ``name``. Points that cannot run here are dropped, each with its reason
(``--list`` prints them): ulysses where the heads are not divisible by P, a
transport this build lacks, NCCL on the CPU. Shards are even, the first ranks
one row more (``lvxattn.sharding``). Python 3.11+ reads TOML with ``tomllib``;
older Pythons need ``pip install tomli``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import sys
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lvxattn  # noqa: E402
from lvxattn import _core, calibrate  # noqa: E402
from lvxattn.devices import pick_device  # noqa: E402
from lvxattn.sharding import even_counts  # noqa: E402
from bench_dist import bench_one  # noqa: E402
from common import metadata, new_results_path, print_table, refuse_committed, write_csv  # noqa: E402

GRID_KEYS = ("P", "Lq", "Lkv", "heads", "D", "algorithms", "transports", "dtypes")
SCALARS = {"repeats": 3, "warmup": 1, "threads": 0, "device": "cpu", "csv": "", "name": "sweep", "weak": False}


def load_config(path: str) -> dict:
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    grids = cfg.pop("grid", None) or [{}]
    defaults = {k: cfg[k] for k in cfg if k in GRID_KEYS or k in SCALARS}
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise SystemExit(f"{path}: unknown keys {sorted(unknown)}")
    for g in grids:
        unknown = set(g) - set(GRID_KEYS) - {"weak"}
        if unknown:
            raise SystemExit(f"{path}: unknown grid keys {sorted(unknown)}")
    return {"defaults": defaults, "grids": grids,
            "scalars": {k: defaults.get(k, v) for k, v in SCALARS.items()}}


def expand(cfg: dict) -> list[dict]:
    """Every point of every grid, in config order, duplicates dropped."""
    points, seen = [], set()
    for g in cfg["grids"]:
        merged = {**cfg["defaults"], **g}
        missing = [k for k in GRID_KEYS if k not in merged]
        if missing:
            raise SystemExit(f"grid {g} lacks {missing}")
        weak = bool(merged.get("weak", False))
        for P, lq, lkv, (hq, hkv), d, alg, tr, dt in itertools.product(*(merged[k] for k in GRID_KEYS)):
            if weak:
                lq, lkv = lq * P, lkv * P
            key = (P, lq, lkv, hq, hkv, d, alg, tr, dt, weak)
            if key not in seen:
                seen.add(key)
                points.append({"P": P, "Lq": lq, "Lkv": lkv, "Hq": hq, "Hkv": hkv, "D": d, "algorithm": alg,
                               "transport": tr, "dtype": dt, "scaling": "weak" if weak else "strong"})
    return points


def why_not(point: dict, device: str) -> str:
    """Why this point cannot run here ("" when it can)."""
    if point["algorithm"] == "ulysses" and (point["Hq"] % point["P"] or point["Hkv"] % point["P"]):
        return f"ulysses needs Hq ({point['Hq']}) and Hkv ({point['Hkv']}) divisible by P ({point['P']})"
    if device == "cpu" and point["transport"] == "nccl":
        return "NCCL needs --device cuda"
    if point["transport"] != "auto" and point["transport"] not in lvxattn.available_transports():
        return f"this build has no {point['transport']} transport (python -m lvxattn info)"
    return ""


def predict(comm, point: dict, algorithm: str, params: dict, lvx_form: str = "") -> dict:
    """Predicted seconds (slowest rank) and bytes sent (largest rank) per phase, and
    whether every rank's predicted bytes will be compared: returns per-rank bytes too."""
    P, r = comm.size, comm.rank
    plan = _core.Plan(even_counts(point["Lq"], P), even_counts(point["Lkv"], P), rank=r, B=1, Hq=point["Hq"],
                      Hkv=point["Hkv"], D=point["D"], dtype=calibrate.core_dtype(point["dtype"]),
                      lvx_form=lvx_form or "ring")
    pred = plan.predict(algorithm, calibrate.cost_params(params))
    return {k: pred[k] for k in ("forward_s", "backward_s", "forward_bytes", "backward_bytes")}


def run_point(comm, device, point: dict, params: dict, repeats: int, warmup: int) -> dict:
    shape = (point["Lq"], point["Lkv"], point["Hq"], point["Hkv"], point["D"], point["dtype"])
    fwd, bwd, stats = bench_one(comm, device, point["algorithm"], point["transport"], shape, repeats, warmup)
    algorithm = stats["algorithm"]
    pred = predict(comm, point, algorithm, params, stats.get("lvx_form", ""))
    f, b = stats["forward"], stats["backward"]
    mx = lambda x: comm.allreduce(x, op=MPI.MAX)  # noqa: E731
    exact = comm.allreduce(int(f["bytes_sent"] == pred["forward_bytes"] and b["bytes_sent"] == pred["backward_bytes"]),
                           op=MPI.MIN)
    fm, bm = statistics.median(fwd), statistics.median(bwd)
    return {
        "requested": point["algorithm"], "algorithm": algorithm, "lvx_form": stats.get("lvx_form", ""),
        "transport": stats["transport"],
        "backend": stats["backend"], "scaling": point["scaling"], "P": comm.size, "dtype": point["dtype"], "B": 1,
        "Lq": point["Lq"], "Lkv": point["Lkv"], "Hq": point["Hq"], "Hkv": point["Hkv"], "D": point["D"],
        "fwd_ms": fm * 1e3, "bwd_ms": bm * 1e3, "fwdbwd_ms": (fm + bm) * 1e3,
        "pred_fwd_ms": mx(pred["forward_s"]) * 1e3, "pred_bwd_ms": mx(pred["backward_s"]) * 1e3,
        "fwd_bytes_sent": mx(f["bytes_sent"]), "bwd_bytes_sent": mx(b["bytes_sent"]),
        "pred_fwd_bytes": mx(pred["forward_bytes"]), "pred_bwd_bytes": mx(pred["backward_bytes"]),
        "bytes_exact": bool(exact),
        "fwd_blocked_ms": mx(f["blocked_s"]) * 1e3, "bwd_blocked_ms": mx(b["blocked_s"]) * 1e3,
        "fwd_compute_ms": mx(f["compute_s"]) * 1e3, "bwd_compute_ms": mx(b["compute_s"]) * 1e3,
        "fwd_min_ms": min(fwd) * 1e3, "bwd_min_ms": min(bwd) * 1e3, "repeats": repeats,
        "cal_fwd_gflops": params["fwd_flops_per_s"] / 1e9, "cal_bwd_gflops": params["bwd_flops_per_s"] / 1e9,
        "cal_gbytes_per_s": params["bytes_per_s"] / 1e9, "cal_latency_us": params["latency_s"] * 1e6,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="overrides the config's device")
    ap.add_argument("--csv", help="output CSV, appended to as points finish (default: the config's csv, else "
                                  "a new file under experiments/results/new/)")
    ap.add_argument("--threads", type=int, help="CPU threads per rank (overrides the config; 0: torch's default)")
    ap.add_argument("--recalibrate", action="store_true", help="measure the cost parameters again")
    ap.add_argument("--time-limit", type=float, default=0, help="start no point after this many seconds")
    ap.add_argument("--list", action="store_true", help="print the points (and those dropped, with why) and exit")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    sc = cfg["scalars"]
    kind = args.device or sc["device"]
    csv_path = args.csv or sc["csv"] or new_results_path(sc["name"])
    refuse_committed(csv_path)   # on every rank, before any collective
    threads = args.threads if args.threads is not None else sc["threads"]
    world = MPI.COMM_WORLD
    rank = world.rank
    points, dropped = [], []
    for p in expand(cfg):
        reason = why_not(p, kind)
        (dropped if reason else points).append({**p, "dropped because": reason} if reason else p)
    columns = ["P", "scaling", "algorithm", "transport", "dtype", "Lq", "Lkv", "Hq", "Hkv", "D"]
    if rank == 0 and dropped:
        print(f"{len(dropped)} of {len(points) + len(dropped)} points dropped (they cannot run here):")
        if args.list:
            print_table(dropped, columns + ["dropped because"])
        else:
            for reason in sorted({p["dropped because"] for p in dropped}):
                print(f"  {sum(p['dropped because'] == reason for p in dropped)} x {reason}")
    if args.list:
        if rank == 0:
            print(f"{len(points)} points to run:")
            print_table(points, columns)
        return []
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(kind, world)
    meta = {**metadata(kind), "host": socket.gethostname(), "mpi_library": MPI.Get_library_version().split(",")[0].strip(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "config": sc["name"]}
    start = time.perf_counter()
    rows, skipped = [], []
    for P in sorted({p["P"] for p in points}):
        mine = [p for p in points if p["P"] == P]
        if P > world.size:
            skipped += mine
            continue
        sub = world.Split(0 if rank < P else MPI.UNDEFINED, rank)
        # sub stays alive to the end: contexts are cached by communicator handle.
        if sub != MPI.COMM_NULL:
            params = {}
            for point in mine:
                stop = sub.bcast(bool(args.time_limit) and time.perf_counter() - start > args.time_limit, root=0)
                if stop:
                    skipped.append(point)
                    continue
                key = (point["transport"], point["dtype"])
                if key not in params:
                    params[key] = calibrate.calibrate(sub, device, point["dtype"], point["transport"],
                                                      force=args.recalibrate)
                    calibrate.set_cost_params(sub, device, point["transport"], params[key])
                row = {**meta, **run_point(sub, device, point, params[key], sc["repeats"], sc["warmup"])}
                if rank == 0:
                    rows.append(row)
                    write_csv(csv_path, [row])
        calibrate.polite_barrier(world)
    if rank == 0:
        print(f"{meta['device']}, {meta['mpi_library']}, git {meta['git_sha']}, {world.size} ranks, "
              f"{len(rows)} points ({time.perf_counter() - start:.1f} s)" + (f", {len(skipped)} skipped" if skipped else ""))
        if rows:
            print_table(rows, ["P", "scaling", "algorithm", "requested", "transport", "dtype", "Lq", "Lkv", "Hq", "Hkv",
                               "D", "fwd_ms", "pred_fwd_ms", "bwd_ms", "pred_bwd_ms", "fwd_blocked_ms",
                               "bwd_blocked_ms", "bytes_exact"])
        if rows:
            print(f"wrote {csv_path}")
    return rows


if __name__ == "__main__":
    main()
