"""CPU kernel benchmark: lvxattn vs torch scaled_dot_product_attention, fp32,
one process, the same thread count, forward and forward+backward.

    python experiments/bench_cpu.py [--threads N] [--repeats 5] [--csv experiments/results/cpu_kernels.csv]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import lvxattn
from common import metadata, new_results_path, print_table, write_csv

SHAPES = [  # B, Hq, Hkv, D, Lq, Lkv
    (1, 8, 8, 64, 256, 8192),
    (1, 32, 8, 128, 512, 16384),
]


def median_time(fn, repeats):
    fn()  # warm up (allocations, thread pools)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_shape(B, Hq, Hkv, D, Lq, Lkv, repeats):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, Lq, Hq, D, generator=gen, requires_grad=True)
    k = torch.randn(B, Lkv, Hkv, D, generator=gen, requires_grad=True)
    v = torch.randn(B, Lkv, Hkv, D, generator=gen, requires_grad=True)
    do = torch.randn(B, Lq, Hq, D, generator=gen)
    # torch wants [B, H, L, D]; the transposes are views and are not timed separately.
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    dot = do.transpose(1, 2).contiguous()

    def ours_fwd():
        with torch.no_grad():
            lvxattn.cross_attention(q, k, v)

    def ours_fb():
        q.grad = k.grad = v.grad = None
        lvxattn.cross_attention(q, k, v).backward(do)

    def torch_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=Hq != Hkv)

    def torch_fb():
        qt.grad = kt.grad = vt.grad = None
        F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=Hq != Hkv).backward(dot)

    flops = 4.0 * B * Hq * Lq * Lkv * D
    out = {}
    for name, fn in (("ours_fwd", ours_fwd), ("torch_fwd", torch_fwd), ("ours_fb", ours_fb), ("torch_fb", torch_fb)):
        out[name] = median_time(fn, repeats)
    return {
        "B": B, "Hq": Hq, "Hkv": Hkv, "D": D, "Lq": Lq, "Lkv": Lkv,
        "ours_fwd_ms": out["ours_fwd"] * 1e3, "torch_fwd_ms": out["torch_fwd"] * 1e3,
        "fwd_ratio": out["ours_fwd"] / out["torch_fwd"],
        "ours_fwdbwd_ms": out["ours_fb"] * 1e3, "torch_fwdbwd_ms": out["torch_fb"] * 1e3,
        "fwdbwd_ratio": out["ours_fb"] / out["torch_fb"],
        "ours_fwd_gflops": flops / out["ours_fwd"] / 1e9,
        "ours_fwdbwd_gflops": 3.5 * flops / out["ours_fb"] / 1e9,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--csv", help="output CSV (default: a new file under experiments/results/new/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = metadata("cpu")
    rows = []
    for shape in SHAPES:
        row = bench_shape(*shape, repeats=args.repeats)
        row.update(meta, threads=args.threads, torch=torch.__version__)
        rows.append(row)
    print(f"{meta['device']}, {args.threads} threads, torch {torch.__version__}, git {meta['git_sha']}")
    print_table(rows, ["Hq", "Hkv", "D", "Lq", "Lkv", "ours_fwd_ms", "torch_fwd_ms", "fwd_ratio",
                       "ours_fwdbwd_ms", "torch_fwdbwd_ms", "fwdbwd_ratio", "ours_fwdbwd_gflops"])
    path = args.csv or new_results_path("cpu_kernels")
    write_csv(path, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
