"""A/B timing of two or more builds of lvxattn on one GPU, in one call, alternating, so that
their ratios can be trusted: the public call ``lvxattn.cross_attention(q, k, v[, q_ranges])``
forward and forward + backward (autograd, ``o.backward(dout)``) on the same shapes and
inputs. Every build is the package ``lvxattn``, so each runs in its own process (a worker
of this script, the build's directory first on PYTHONPATH); each round runs every build
once, in an order that changes from round to round (``round_order``: A B, B A, A B, ...
for two builds; A B C, C B A, C A B, B A C, ... for three), and the table gives the
median over rounds of each build's times (themselves medians of
``triton.testing.do_bench``, as in bench_gpu_kernels.py) and the ratio of each build's
median to that of A, the baseline (B/A, C/A, ...). In the last round each worker also
profiles three forward + backward calls (torch.profiler) and reports the device time of
their kernels by name, per call: where a difference lies, in the kernels (which) or
around them.

Shapes are 'B,Hq,Hkv,Lq,Lkv,D,dtype[,mask]'; masks (q_ranges, the same in every batch):
'latest5': query rows in five equal groups, group g sees the g-th fifth of the KV rows
(the 'latest' image; interval edges inside KV tiles; query tiles of two groups have KV
tiles that some rows see whole and others not at all); 'prev5': group g sees the first
g + 1 fifths ('all_previous'); 'random': each row sees [min(u, v), max(u, v)) for u, v
uniform in [0, Lkv] (seeded), so nearly every tile is masked and many straddle an edge;
no mask: no q_ranges. Writes a CSV, one row per build and shape (device, date, the
build's label and git sha, the baseline's label, shape, medians, min and max over rounds,
the medians over the baseline's, kernel time per call).

usage: python experiments/bench_ab.py --a old=/tmp/ab/old_pkg --b new=/tmp/ab/new_pkg \
           --sha-a e50204f --sha-b <sha> [--build v1=/tmp/ab/v1_pkg@<sha> ...] --out ab.csv \
           [--rounds 3] [--reps-ms 100] [--shapes ...]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gpu_state import describe  # noqa: E402 (no torch: the parent process imports it too)

SHAPES = [
    (1, 16, 16, 1024, 16384, 128, "bf16", ""),
    (1, 16, 16, 256, 32768, 128, "bf16", ""),
    (1, 32, 8, 1024, 16384, 128, "bf16", ""),
    (1, 16, 16, 4096, 65536, 128, "bf16", ""),
    (1, 32, 8, 256, 131072, 128, "bf16", ""),
    (1, 16, 16, 2048, 262144, 128, "fp16", ""),
    (1, 16, 16, 1024, 65536, 64, "bf16", ""),
    (1, 16, 16, 1024, 65536, 96, "bf16", ""),
    (1, 16, 16, 1024, 65536, 128, "bf16", "latest5"),
    (1, 16, 16, 1024, 65536, 128, "bf16", "prev5"),
    (1, 16, 16, 1024, 65536, 128, "bf16", "random"),
]
MASKS = ("latest5", "prev5", "random")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # the builds' names in the table's ratio columns


def parse_shapes(text: str):
    out = []
    for item in filter(None, text.split(";")):
        f = item.split(",")
        mask = f[7] if len(f) > 7 else ""
        if mask and mask not in MASKS:
            raise SystemExit(f"shape {item!r}: unknown mask {mask!r} (known: {', '.join(MASKS)})")
        out.append((*(int(x) for x in f[:6]), f[6], mask))
    return out


def shape_name(s) -> str:
    B, Hq, Hkv, Lq, Lkv, D, dt, mask = s
    return f"{B} {Hq}/{Hkv} {Lq}x{Lkv} D{D} {dt}" + (f" {mask}" if mask else "")


# ---- worker: one build, all shapes -------------------------------------------------
def mask_ranges(kind: str, B: int, Lq: int, Lkv: int, device):
    """q_ranges int32 [B, Lq, 2] of a mask named in MASKS (the module docstring)."""
    import torch
    if kind == "random":
        gen = torch.Generator().manual_seed(Lq * 7919 + Lkv)
        uv = torch.randint(0, Lkv + 1, (Lq, 2), generator=gen)
        begin, end = uv.min(dim=1).values, uv.max(dim=1).values
    elif kind in ("latest5", "prev5"):
        groups = 5
        g = torch.div(torch.arange(Lq) * groups, Lq, rounding_mode="floor")
        begin, end = (g * Lkv) // groups, ((g + 1) * Lkv) // groups
        if kind == "prev5":
            begin = torch.zeros_like(begin)
    else:
        raise ValueError(f"unknown mask {kind!r} (known: {', '.join(MASKS)})")
    r = torch.stack([begin, end], dim=-1).to(torch.int32)
    return r.expand(B, Lq, 2).contiguous().to(device)


def worker(args) -> None:
    import torch
    from bench_gpu_kernels import bench_ms, kernel_times, make_inputs  # noqa: E402 (the same timing and inputs as the SDPA comparison)
    from gpu_state import GpuState  # noqa: E402
    import lvxattn

    where = os.path.realpath(os.path.dirname(lvxattn.__file__))
    if not where.startswith(os.path.realpath(args.pkg) + os.sep):
        raise SystemExit(f"worker {args.label}: imported lvxattn from {where}, not from {args.pkg}")
    results = {"label": args.label, "lvxattn": where, "shapes": {}}
    for shape in parse_shapes(args.shapes):
        B, Hq, Hkv, Lq, Lkv, D, dname, mask = shape
        q, k, v, dout, scale = make_inputs(shape[:7])  # the SDPA comparison's inputs for the shape
        ranges = mask_ranges(mask, B, Lq, Lkv, "cuda") if mask else None
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

        def fwd():
            with torch.no_grad():
                return lvxattn.cross_attention(q, k, v, q_ranges=ranges, scale=scale)

        def fwd_bwd():
            for x in (qg, kg, vg):
                x.grad = None
            lvxattn.cross_attention(qg, kg, vg, q_ranges=ranges, scale=scale).backward(dout)

        row = {}
        try:
            o = fwd()
            torch.cuda.synchronize()
            row["checksum"] = float(o.float().abs().mean())
            row["fwd_ms"] = bench_ms(fwd, args.reps_ms)
            with GpuState() as gpu:
                row["fwd_bwd_ms"] = bench_ms(fwd_bwd, args.reps_ms)
            row["gpu"] = gpu.summary()
            if args.profile:
                row["kernels_fwd"] = kernel_times(fwd)
                row["kernels_fwd_bwd"] = kernel_times(fwd_bwd)
        except Exception as e:  # report, go on with the other shapes
            row["error"] = str(e).splitlines()[0][:200]
        results["shapes"][shape_name(shape)] = row
        del q, k, v, dout, qg, kg, vg
        torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(results, f)


# ---- orchestrator -------------------------------------------------------------------
class Build(NamedTuple):
    label: str
    pkg: str  # the directory that holds the package lvxattn
    sha: str


def parse_builds(a: str, b: str, sha_a: str, sha_b: str, extra: list[str]) -> list[Build]:
    """The builds in order: A (the baseline) from 'LABEL=DIR' a and sha_a, B from b and
    sha_b, then one per 'LABEL=DIR[@SHA]' of extra (sha 'unknown' when none is given).
    Raises ValueError on a spec without LABEL or DIR, a repeated label, or more than 26 builds."""
    builds = []
    for spec, sha in [(a, sha_a), (b, sha_b)] + [(e, None) for e in extra]:
        label, sep, pkg = spec.partition("=")
        if sha is None:
            pkg_at, at, sha = pkg.rpartition("@")
            pkg, sha = (pkg_at, sha or "unknown") if at and os.sep not in sha else (pkg, "unknown")
        if not sep or not label or not pkg:
            raise ValueError(f"build {spec!r}: expected LABEL=DIR")
        if label in (x.label for x in builds):
            raise ValueError(f"build {spec!r}: label {label!r} is taken; labels must be unique")
        builds.append(Build(label, pkg, sha))
    if len(builds) > len(LETTERS):
        raise ValueError(f"{len(builds)} builds: at most {len(LETTERS)}")
    return builds


def round_order(n: int, r: int) -> list[int]:
    """Indices of n builds in the order they run in round r (0-based): the list rotated by
    r - r % 2, reversed in odd rounds. Rounds come in mirrored pairs (a drift in time
    cancels over a pair), and over 2n rounds every build runs first twice and last twice;
    for n = 2 this is A B, B A, A B, ..."""
    k = (r - r % 2) % n
    order = list(range(k, n)) + list(range(k))
    return order[::-1] if r % 2 else order


def run_worker(build: Build, args, profile: bool, tmp: str) -> dict:
    out = os.path.join(tmp, f"worker_{len(os.listdir(tmp))}.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = build.pkg + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--label", build.label, "--pkg", build.pkg,
           "--json", out, "--shapes", args.shapes, "--reps-ms", str(args.reps_ms)] + (["--profile"] if profile else [])
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        print(f"worker {build.label} ran past {args.worker_timeout:.0f} s")
        return {}
    if r.returncode != 0 or not os.path.exists(out):
        print(f"worker {build.label} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        return {}
    with open(out) as f:
        return json.load(f)


def run_rounds(builds: list[Build], args) -> dict:
    """{label: [worker result, one per round it completed]}."""
    runs = {b.label: [] for b in builds}
    start, last_s = time.monotonic(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            elapsed = time.monotonic() - start
            if r > 0 and args.budget_s and elapsed + 1.1 * last_s > args.budget_s:
                print(f"round {r + 1} skipped: {elapsed:.0f} s spent, a round takes {last_s:.0f} s, budget {args.budget_s:.0f} s")
                break
            t = time.monotonic()
            # Profile in the last round (and in the first, should the budget end the rounds early).
            profile = r == args.rounds - 1 or (r == 0 and args.budget_s > 0)
            for i in round_order(len(builds), r):
                res = run_worker(builds[i], args, profile=profile, tmp=tmp)
                if res:
                    runs[builds[i].label].append(res)
            last_s = time.monotonic() - t
            print(f"round {r + 1}/{args.rounds} done ({last_s:.0f} s)", flush=True)
    return runs


def summarize(builds: list[Build], runs: dict, name: str) -> dict:
    """One shape's numbers per build label: medians, min and max over rounds (ms), rounds,
    the ratios of the medians to the baseline (builds[0]), kernel times per call (last
    round that has them), the kernel breakdown of forward + backward and the first error."""
    def series(label, key):
        return [run["shapes"][name][key] for run in runs[label] if key in run["shapes"].get(name, {})]

    def latest(label, key):
        xs = series(label, key)
        return xs[-1] if xs else {}

    out = {}
    for b in builds:
        st = out[b.label] = {"rounds": len(series(b.label, "fwd_ms")), "kernels_by_name": latest(b.label, "kernels_fwd_bwd"),
                             "error": (series(b.label, "error") or [""])[0]}
        for key in ("fwd", "fwd_bwd"):
            xs = series(b.label, key + "_ms")
            st[key + "_ms"], st[key + "_ms_min"], st[key + "_ms_max"] = \
                (statistics.median(xs), min(xs), max(xs)) if xs else (float("nan"),) * 3
            st[f"kernels_{key}_ms"] = sum(latest(b.label, "kernels_" + key).values()) or float("nan")
            st[key + "_over_baseline"] = st[key + "_ms"] / out[builds[0].label][key + "_ms"]
        # what the GPU ran at during the forward+backward timing: medians over the rounds
        gpu = series(b.label, "gpu")
        for k in ("sm_mhz", "power_w"):
            xs = [g[k] for g in gpu if g.get(k) is not None]
            st["fwd_bwd_" + k] = statistics.median(xs) if xs else ""
        st["clock_events"] = "+".join(sorted({e for g in gpu for e in (g.get("clock_events") or "").split("+") if e}))
    return out


CSV_STATS = ("rounds", "fwd_ms", "fwd_ms_min", "fwd_ms_max", "fwd_bwd_ms", "fwd_bwd_ms_min", "fwd_bwd_ms_max",
             "fwd_over_baseline", "fwd_bwd_over_baseline", "kernels_fwd_ms", "kernels_fwd_bwd_ms",
             "fwd_bwd_sm_mhz", "fwd_bwd_power_w", "clock_events", "error")


def report(builds: list[Build], runs: dict, shapes: list, meta: dict, out_csv: str) -> None:
    """Prints the table and the kernel breakdown, writes the CSV (one row per build and
    shape; meta: device, date, torch, lvx_cuda_sm90)."""
    labels = [b.label for b in builds]

    def cells(values, ratios, kern):
        return " ".join([f"{x:9.3f}" for x in values] + [f"{x:6.3f}" for x in ratios] + [f"{x:9.3f}" for x in kern])

    def heads(phase):
        return " ".join([f"{phase + ' ' + x:>9s}" for x in labels] + [f"{L + '/A':>6s}" for L in LETTERS[1:len(builds)]]
                        + [f"{'kern ' + x:>9s}" for x in labels])

    print("\nms, medians over rounds; X/A: median of build X over that of A; kern: device time of the kernels of one call (last round)")
    print(f"{'shape':38s} {heads('fwd')}   {heads('f+b')}")
    rows, stats = [], {}
    for s in shapes:
        name = shape_name(s)
        st = stats[name] = summarize(builds, runs, name)
        fwd, fwd_bwd = (cells([st[x][key + "_ms"] for x in labels], [st[x][key + "_over_baseline"] for x in labels[1:]],
                              [st[x][f"kernels_{key}_ms"] for x in labels]) for key in ("fwd", "fwd_bwd"))
        print(f"{name:38s} {fwd}   {fwd_bwd}")
        for b in builds:
            x = st[b.label]
            rows.append(dict(device=meta["device"], date=meta["date"], torch=meta["torch"], label=b.label,
                             git_sha=b.sha, baseline_label=labels[0], lvx_cuda_sm90=meta["lvx_cuda_sm90"],
                             **dict(zip(("B", "Hq", "Hkv", "Lq", "Lkv", "D", "dtype", "mask"), (*s[:7], s[7] or "none"))),
                             **{k: round(x[k], 4) if isinstance(x[k], float) else x[k] for k in CSV_STATS}))
    for label in labels:
        if runs[label]:
            print(f"{label}: lvxattn from {runs[label][0]['lvxattn']}")
    print("\nkernel device time per forward+backward call (ms, last round), by kernel:")
    for name, st in stats.items():
        print(f"  {name}")
        for label in labels:
            ks = st[label]["kernels_by_name"]
            gpu = describe({"sm_mhz": st[label]["fwd_bwd_sm_mhz"], "power_w": st[label]["fwd_bwd_power_w"],
                            "clock_events": st[label]["clock_events"]})
            print(f"    {label:6s} " + ", ".join(f"{k.split('::')[-1]} {v:.3f}" for k, v in list(ks.items())[:6])
                  + (f"   [f+b at {gpu}]" if gpu else ""))
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out_csv}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", help="LABEL=DIR: the first build, the baseline (DIR holds the package lvxattn)")
    ap.add_argument("--b", help="LABEL=DIR: the second build")
    ap.add_argument("--sha-a", default="unknown", help="git sha of the first build's tree")
    ap.add_argument("--sha-b", default="unknown", help="git sha of the second build's tree")
    ap.add_argument("--build", action="append", default=[], metavar="LABEL=DIR[@SHA]",
                    help="a further build (repeatable; after A and B, in the order given)")
    ap.add_argument("--out", default="ab.csv", help="CSV file to write")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running every build once")
    ap.add_argument("--reps-ms", type=float, default=100.0, help="do_bench time budget per measurement (ms)")
    ap.add_argument("--shapes", default=";".join(",".join(str(x) for x in s) for s in SHAPES),
                    help="'B,Hq,Hkv,Lq,Lkv,D,dtype[,mask];...' (masks: " + ", ".join(MASKS) + ")")
    ap.add_argument("--worker-timeout", type=float, default=240.0, help="seconds per worker process")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="no round starts unless the last round's duration still fits (0: no limit)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--label", default="", help=argparse.SUPPRESS)
    ap.add_argument("--pkg", default="", help=argparse.SUPPRESS)
    ap.add_argument("--json", default="", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.a and args.b):
        ap.error("--a and --b are required")
    try:
        builds = parse_builds(args.a, args.b, args.sha_a, args.sha_b, args.build)
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    missing = [b.pkg for b in builds if not os.path.isdir(b.pkg)]
    if missing:
        ap.error(f"no such directory: {', '.join(missing)}")
    import torch
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                lvx_cuda_sm90=os.environ.get("LVX_CUDA_SM90", "1"))
    named = ", ".join(f"{L} = {b.label} ({b.sha})" for L, b in zip(LETTERS, builds))
    print(f"device {meta['device']}, torch {meta['torch']}, {meta['date']}; {named}; "
          f"{args.rounds} rounds, public call lvxattn.cross_attention, LVX_CUDA_SM90={meta['lvx_cuda_sm90']}")
    report(builds, run_rounds(builds, args), shapes, meta, args.out)


if __name__ == "__main__":
    main()
