"""A/B timing of two builds of lvxattn on one GPU, in one call, alternating, so that their
ratio can be trusted: the public call ``lvxattn.cross_attention(q, k, v[, q_ranges])``
forward and forward + backward (autograd, ``o.backward(dout)``) on the same shapes and
inputs. Both builds are the package ``lvxattn``, so each runs in its own process (a
worker of this script, the build's directory first on PYTHONPATH); the workers run in
rounds A B, B A, A B, ... and the table gives the median over rounds of each build's
times (themselves medians of ``triton.testing.do_bench``, as in bench_gpu_kernels.py) and
the ratio B/A. In the last round each worker also profiles three forward + backward calls
(torch.profiler) and reports the device time of their kernels by name, per call: where a
difference lies, in the kernels (which) or around them.

Shapes are 'B,Hq,Hkv,Lq,Lkv,D,dtype[,mask]'; masks (q_ranges, the same in every batch):
'latest5': query rows in five equal groups, group g sees the g-th fifth of the KV rows
(the 'latest' image; interval edges inside KV tiles; query tiles of two groups have KV
tiles that some rows see whole and others not at all); 'prev5': group g sees the first
g + 1 fifths ('all_previous'); 'random': each row sees [min(u, v), max(u, v)) for u, v
uniform in [0, Lkv] (seeded), so nearly every tile is masked and many straddle an edge;
no mask: no q_ranges. Writes a CSV (device, date, each build's label and git sha, shape,
medians, min and max over rounds, kernel time per call).

usage: python experiments/bench_ab.py --a old=/tmp/ab/old_pkg --b new=/tmp/ab/new_pkg \
           --sha-a e50204f --sha-b <sha> --out ab.csv [--rounds 3] [--reps-ms 100] [--shapes ...]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

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


def kernel_times(fn, calls: int = 3) -> dict:
    """Device time (ms) per call of fn by kernel name (template arguments dropped)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out: dict = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        name = e.name.split("(")[0].split("<")[0].replace("void ", "").strip()
        out[name] = out.get(name, 0.0) + e.time_range.elapsed_us() / 1e3 / calls  # us -> ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def worker(args) -> None:
    import torch
    sys.path.insert(0, HERE)
    from bench_gpu_kernels import bench_ms  # noqa: E402 (the same timing as the SDPA comparison)
    import lvxattn

    where = os.path.realpath(os.path.dirname(lvxattn.__file__))
    if not where.startswith(os.path.realpath(args.pkg) + os.sep):
        raise SystemExit(f"worker {args.label}: imported lvxattn from {where}, not from {args.pkg}")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    results = {"label": args.label, "lvxattn": where, "shapes": {}}
    for shape in parse_shapes(args.shapes):
        B, Hq, Hkv, Lq, Lkv, D, dname, mask = shape
        dtype = dtypes[dname]
        gen = torch.Generator(device="cuda").manual_seed(Lq + Lkv + D)
        q = torch.randn(B, Lq, Hq, D, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(B, Lkv, Hkv, D, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(B, Lkv, Hkv, D, device="cuda", dtype=dtype, generator=gen)
        dout = torch.randn(B, Lq, Hq, D, device="cuda", dtype=dtype, generator=gen)
        ranges = mask_ranges(mask, B, Lq, Lkv, "cuda") if mask else None
        scale = 1.0 / math.sqrt(D)
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
            row["fwd_bwd_ms"] = bench_ms(fwd_bwd, args.reps_ms)
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
def run_worker(label: str, pkg: str, args, profile: bool, tmp: str) -> dict:
    out = os.path.join(tmp, f"{label}_{len(os.listdir(tmp))}.json")
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--label", label, "--pkg", pkg, "--json", out,
           "--shapes", args.shapes, "--reps-ms", str(args.reps_ms)] + (["--profile"] if profile else [])
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        print(f"worker {label} ran past {args.worker_timeout:.0f} s")
        return {}
    if r.returncode != 0 or not os.path.exists(out):
        print(f"worker {label} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        return {}
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", help="LABEL=DIR: the first build (DIR holds the package lvxattn)")
    ap.add_argument("--b", help="LABEL=DIR: the second build")
    ap.add_argument("--sha-a", default="unknown", help="git sha of the first build's tree")
    ap.add_argument("--sha-b", default="unknown", help="git sha of the second build's tree")
    ap.add_argument("--out", default="ab.csv", help="CSV file to write")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, each running both builds once")
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
    (la, pa), (lb, pb) = (x.split("=", 1) for x in (args.a, args.b))
    import torch
    dev = torch.cuda.get_device_name()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    print(f"device {dev}, torch {torch.__version__}, {date}; A = {la} ({args.sha_a}), B = {lb} ({args.sha_b}); "
          f"{args.rounds} rounds, public call lvxattn.cross_attention, LVX_CUDA_SM90={os.environ.get('LVX_CUDA_SM90', '1')}")
    runs = {la: [], lb: []}
    start, last = time.monotonic(), 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            elapsed = time.monotonic() - start
            if r > 0 and args.budget_s and elapsed + 1.1 * last > args.budget_s:
                print(f"round {r + 1} skipped: {elapsed:.0f} s spent, a round takes {last:.0f} s, budget {args.budget_s:.0f} s")
                break
            t = time.monotonic()
            # Profile in the last round (and in the first, should the budget end the rounds early).
            profile = r == args.rounds - 1 or (r == 0 and args.budget_s > 0)
            order = [(la, pa), (lb, pb)] if r % 2 == 0 else [(lb, pb), (la, pa)]
            for label, pkg in order:
                res = run_worker(label, pkg, args, profile=profile, tmp=tmp)
                if res:
                    runs[label].append(res)
            last = time.monotonic() - t
            print(f"round {r + 1}/{args.rounds} done ({last:.0f} s)", flush=True)
    shapes = parse_shapes(args.shapes)

    def series(label, name, key):
        return [run["shapes"][name][key] for run in runs[label] if key in run["shapes"].get(name, {})]

    def last(label, name, key):
        for run in reversed(runs[label]):
            if key in run["shapes"].get(name, {}):
                return run["shapes"][name][key]
        return {}

    print(f"\nms, medians over rounds; kern: device time of the kernels of one call (last round)")
    print(f"{'shape':38s} {'fwd ' + la:>9s} {'fwd ' + lb:>9s} {'B/A':>6s} {'kern ' + la:>9s} {'kern ' + lb:>9s}   "
          f"{'f+b ' + la:>9s} {'f+b ' + lb:>9s} {'B/A':>6s} {'kern ' + la:>9s} {'kern ' + lb:>9s}")
    rows = []
    for s in shapes:
        name = shape_name(s)
        med = {}
        for label in (la, lb):
            for key in ("fwd_ms", "fwd_bwd_ms"):
                xs = series(label, name, key)
                med[label, key] = (statistics.median(xs), min(xs), max(xs)) if xs else (float("nan"),) * 3
        kern = {label: sum(last(label, name, "kernels_fwd_bwd").values()) or float("nan") for label in (la, lb)}
        kern_f = {label: sum(last(label, name, "kernels_fwd").values()) or float("nan") for label in (la, lb)}
        fa, fb = med[la, "fwd_ms"][0], med[lb, "fwd_ms"][0]
        ga, gb = med[la, "fwd_bwd_ms"][0], med[lb, "fwd_bwd_ms"][0]
        print(f"{name:38s} {fa:9.3f} {fb:9.3f} {fb / fa:6.3f} {kern_f[la]:9.3f} {kern_f[lb]:9.3f}   "
              f"{ga:9.3f} {gb:9.3f} {gb / ga:6.3f} {kern[la]:9.3f} {kern[lb]:9.3f}")
        for label, sha in ((la, args.sha_a), (lb, args.sha_b)):
            err = [run["shapes"][name]["error"] for run in runs[label] if "error" in run["shapes"].get(name, {})]
            rows.append(dict(device=dev, date=date, torch=torch.__version__, label=label, git_sha=sha,
                             lvx_cuda_sm90=os.environ.get("LVX_CUDA_SM90", "1"), B=s[0], Hq=s[1], Hkv=s[2], Lq=s[3],
                             Lkv=s[4], D=s[5], dtype=s[6], mask=s[7] or "none", rounds=len(series(label, name, "fwd_ms")),
                             fwd_ms=round(med[label, "fwd_ms"][0], 4), fwd_ms_min=round(med[label, "fwd_ms"][1], 4),
                             fwd_ms_max=round(med[label, "fwd_ms"][2], 4), fwd_bwd_ms=round(med[label, "fwd_bwd_ms"][0], 4),
                             fwd_bwd_ms_min=round(med[label, "fwd_bwd_ms"][1], 4),
                             fwd_bwd_ms_max=round(med[label, "fwd_bwd_ms"][2], 4),
                             kernels_fwd_ms=round(kern_f[label], 4), kernels_fwd_bwd_ms=round(kern[label], 4),
                             error=err[0] if err else ""))
    for label in (la, lb):
        if runs[label]:
            print(f"{label}: lvxattn from {runs[label][0]['lvxattn']}")
    print("\nkernel device time per forward+backward call (ms, last round), by kernel:")
    for s in shapes:
        name = shape_name(s)
        print(f"  {name}")
        for label in (la, lb):
            ks = last(label, name, "kernels_fwd_bwd")
            print(f"    {label:6s} " + ", ".join(f"{k.split('::')[-1]} {v:.3f}" for k, v in list(ks.items())[:6]))
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
