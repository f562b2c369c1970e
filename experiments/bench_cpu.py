"""CPU kernel benchmark: lvxattn against torch scaled_dot_product_attention in one
process with the same thread count, forward and forward+backward, fp32 and bf16
(grouped-query) shapes. Timings are medians of interleaved repeats (ours, torch,
ours, ...), so a load that drifts during the run hits both sides alike.

    python experiments/bench_cpu.py [--threads N] [--repeats 5] [--csv PATH]

The CSV (default experiments/results/new/cpu_kernels_<cpu>_<sha>_<date>-<time>.csv, a
new file per run) records the CPU model, the kernel variant and BLAS lvxattn dispatched to,
the date and the git sha.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import torch
import torch.nn.functional as F

import lvxattn
from lvxattn import _core
from common import metadata, new_results_path, print_table, write_csv

SHAPES = [  # B, Hq, Hkv, D, Lq, Lkv, dtype
    (1, 8, 8, 64, 256, 8192, torch.float32),
    (1, 32, 8, 128, 512, 16384, torch.float32),
    (1, 32, 8, 128, 512, 16384, torch.bfloat16),
]


def interleaved_medians(fns, repeats):
    """fns: name -> callable. Each is warmed up once, then the names take turns."""
    for fn in fns.values():
        fn()  # warm up (allocations, thread pools)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def bench_shape(B, Hq, Hkv, D, Lq, Lkv, dtype, repeats):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype).requires_grad_()
    do = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
    # torch wants [B, H, L, D] (its best layout); the copies are made once, untimed.
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    dot = do.transpose(1, 2).contiguous()
    gqa = Hq != Hkv

    def ours_fwd():
        with torch.no_grad():
            lvxattn.cross_attention(q, k, v)

    def ours_fb():
        q.grad = k.grad = v.grad = None
        lvxattn.cross_attention(q, k, v).backward(do)

    def torch_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=gqa)

    def torch_fb():
        qt.grad = kt.grad = vt.grad = None
        F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=gqa).backward(dot)

    t = interleaved_medians({"ours_fwd": ours_fwd, "torch_fwd": torch_fwd}, repeats)
    t.update(interleaved_medians({"ours_fb": ours_fb, "torch_fb": torch_fb}, repeats))
    flops = 4.0 * B * Hq * Lq * Lkv * D  # forward; forward+backward is 3.5x
    return {
        "B": B, "Hq": Hq, "Hkv": Hkv, "D": D, "Lq": Lq, "Lkv": Lkv, "dtype": str(dtype).replace("torch.", ""),
        "ours_fwd_ms": t["ours_fwd"] * 1e3, "torch_fwd_ms": t["torch_fwd"] * 1e3,
        "fwd_ratio": t["ours_fwd"] / t["torch_fwd"],
        "ours_fwdbwd_ms": t["ours_fb"] * 1e3, "torch_fwdbwd_ms": t["torch_fb"] * 1e3,
        "fwdbwd_ratio": t["ours_fb"] / t["torch_fb"],
        "ours_fwd_gflops": flops / t["ours_fwd"] / 1e9,
        "ours_fwdbwd_gflops": 3.5 * flops / t["ours_fb"] / 1e9,
        "torch_fwdbwd_gflops": 3.5 * flops / t["torch_fb"] / 1e9,
    }


def default_csv(meta):
    """A new file per run: experiments/results/new/cpu_kernels_<cpu>_<sha>_<date>-<time>.csv."""
    cpu = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    return new_results_path(f"cpu_kernels_{cpu}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shapes", default=None, help="comma-separated indices into SHAPES (default: all)")
    ap.add_argument("--csv", help="output CSV (default: a new file under experiments/results/new/)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meta = metadata("cpu")
    shapes = SHAPES if args.shapes is None else [SHAPES[int(i)] for i in args.shapes.split(",")]
    kernels = _core.cpu_kernels_describe()
    rows = []
    for shape in shapes:
        row = bench_shape(*shape, repeats=args.repeats)
        row.update(meta, threads=args.threads, torch=torch.__version__, kernels=kernels)
        rows.append(row)
        print_table([row], ["Hq", "Hkv", "D", "Lq", "Lkv", "dtype", "fwd_ratio", "fwdbwd_ratio"])
    print(f"\n{meta['device']}, {args.threads} threads, torch {torch.__version__}, git {meta['git_sha']}")
    print(f"lvxattn CPU kernels: {kernels}")
    print_table(rows, ["Hq", "Hkv", "D", "Lq", "Lkv", "dtype", "ours_fwd_ms", "torch_fwd_ms", "fwd_ratio",
                       "ours_fwdbwd_ms", "torch_fwdbwd_ms", "fwdbwd_ratio", "ours_fwdbwd_gflops"])
    path = args.csv or default_csv(meta)
    write_csv(path, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
