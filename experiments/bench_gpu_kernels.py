"""Times lvxattn's CUDA attention step kernels against torch SDPA (flash and cuDNN)
on five single-GPU cross-attention shapes (short queries, long K/V; bf16, D=128), in one
process on one card, and writes a CSV with the device, git sha and date.

Ours goes through cuda/dev/liblvx_cuda_dev.so (built by cuda/dev/run_playground.sh),
called with tensor.data_ptr() via ctypes on torch's current stream.
  fwd     = fill(o, lse) + attend_fwd_step
  fwd+bwd = fwd + row_dot + fill(dq, dk, dv) + attend_bwd_step  (fp32 gradients,
            no conversion to bf16; SDPA returns bf16 gradients)
FLOPs: 4·B·Hq·Lq·Lkv·D forward, 3.5× that for forward+backward (FlashAttention-2's
convention: the backward does 2.5× the forward's matrix products; Dao, arXiv 2307.08691).

usage: python experiments/bench_gpu_kernels.py --lib /tmp/lvx_cuda_dev/liblvx_cuda_dev.so [--out results.csv]
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import new_results_path, write_csv  # noqa: E402

SHAPES = [  # (Hq, Hkv, Lq, Lkv)
    (16, 16, 1024, 16384),
    (16, 16, 256, 32768),
    (32, 8, 1024, 16384),
    (16, 16, 4096, 65536),
    (32, 8, 256, 131072),
]
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class Lib:
    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        P, L, I, Fl = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
        self.lib.lvx_dev_fwd.argtypes = [P, I, L, L, L, L, L, L, P, P, P, P, L, Fl, P, P]
        self.lib.lvx_dev_bwd.argtypes = [P, I, L, L, L, L, L, L, P, P, P, P, P, P, P, L, Fl, P, P, P]
        self.lib.lvx_dev_row_dot.argtypes = [P, I, L, L, L, L, P, P, P]
        self.lib.lvx_dev_fill.argtypes = [P, P, Fl, L]

    @staticmethod
    def _s():
        # torch's default stream is the legacy one (handle 0); pass cudaStreamLegacy (0x1)
        # so that the backend does not fall back to its own non-blocking stream.
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream or 1)

    def fill(self, t, value):
        assert self.lib.lvx_dev_fill(self._s(), t.data_ptr(), value, t.numel()) == 0

    def fwd(self, q, k, v, o, lse, scale, q_ranges=None, kv_begin=0):
        B, Lq, Hq, D = q.shape
        Lkv, Hkv = k.shape[1], k.shape[2]
        r = q_ranges.data_ptr() if q_ranges is not None else None
        assert self.lib.lvx_dev_fwd(self._s(), DTYPE_CODE[q.dtype], B, Lq, Lkv, Hq, Hkv, D, q.data_ptr(),
                                    k.data_ptr(), v.data_ptr(), r, kv_begin, scale, o.data_ptr(),
                                    lse.data_ptr()) == 0

    def row_dot(self, dout, o, dl):
        B, L, H, D = dout.shape
        assert self.lib.lvx_dev_row_dot(self._s(), DTYPE_CODE[dout.dtype], B, L, H, D, dout.data_ptr(),
                                        o.data_ptr(), dl.data_ptr()) == 0

    def bwd(self, q, k, v, dout, lse, dl, dq, dk, dv, scale, q_ranges=None, kv_begin=0):
        B, Lq, Hq, D = q.shape
        Lkv, Hkv = k.shape[1], k.shape[2]
        r = q_ranges.data_ptr() if q_ranges is not None else None
        assert self.lib.lvx_dev_bwd(self._s(), DTYPE_CODE[q.dtype], B, Lq, Lkv, Hq, Hkv, D, q.data_ptr(),
                                    k.data_ptr(), v.data_ptr(), dout.data_ptr(), lse.data_ptr(), dl.data_ptr(),
                                    r, kv_begin, scale, dq.data_ptr(), dk.data_ptr(), dv.data_ptr()) == 0


def median_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return times[len(times) // 2]


def bench_shape(lib: Lib, Hq, Hkv, Lq, Lkv, D=128, B=1, dtype=torch.bfloat16, reps=20, label="ours", sdpa=True):
    dev = "cuda"
    q = torch.randn(B, Lq, Hq, D, device=dev, dtype=dtype)
    k = torch.randn(B, Lkv, Hkv, D, device=dev, dtype=dtype)
    v = torch.randn(B, Lkv, Hkv, D, device=dev, dtype=dtype)
    dout = torch.randn(B, Lq, Hq, D, device=dev, dtype=dtype)
    scale = 1.0 / math.sqrt(D)
    o = torch.empty(B, Lq, Hq, D, device=dev, dtype=torch.float32)
    lse = torch.empty(B, Hq, Lq, device=dev, dtype=torch.float32)
    dl = torch.empty_like(lse)
    dq = torch.empty(B, Lq, Hq, D, device=dev, dtype=torch.float32)
    dk = torch.empty(B, Lkv, Hkv, D, device=dev, dtype=torch.float32)
    dv = torch.empty_like(dk)
    o_st = torch.empty_like(q)
    torch.cuda.synchronize()

    def ours_fwd():
        lib.fill(o, 0.0)
        lib.fill(lse, -math.inf)
        lib.fwd(q, k, v, o, lse, scale)

    def ours_fwd_bwd():
        ours_fwd()
        lib.row_dot(dout, o_st, dl)  # O in storage type, as the schedule keeps it
        lib.fill(dq, 0.0)
        lib.fill(dk, 0.0)
        lib.fill(dv, 0.0)
        lib.bwd(q, k, v, dout, lse, dl, dq, dk, dv, scale)

    # correctness against SDPA (math backend in fp32) on this shape
    ours_fwd()
    torch.cuda.synchronize()
    o_st.copy_(o)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = Hq != Hkv
    ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float(), scale=scale, enable_gqa=gqa) \
        if Lq * Lkv * Hq <= 2**31 else None
    err = float((o.transpose(1, 2) - ref).norm() / ref.norm()) if ref is not None else float("nan")
    del ref

    rows = {}
    rows[label] = (median_ms(ours_fwd, reps), median_ms(ours_fwd_bwd, reps))
    if not sdpa:
        return rows, 4.0 * B * Hq * Lq * Lkv * D, err
    qg, kg, vg = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
    dog = dout.transpose(1, 2)
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(be):
                def f():
                    return F.scaled_dot_product_attention(qg, kg, vg, scale=scale, enable_gqa=gqa)

                def fb():
                    out = F.scaled_dot_product_attention(qg, kg, vg, scale=scale, enable_gqa=gqa)
                    torch.autograd.grad(out, (qg, kg, vg), dog)

                with torch.no_grad():
                    tf = median_ms(f, reps)
                tfb = median_ms(fb, reps)
            rows[name] = (tf, tfb)
        except Exception as e:  # a backend may refuse a shape (e.g. GQA)
            print(f"  {name} failed: {str(e).splitlines()[0][:120]}")
    flops = 4.0 * B * Hq * Lq * Lkv * D
    return rows, flops, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out", help="output CSV (default: a new file under experiments/results/new/)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sha", default=None, help="git sha of the tree (when .git is not there)")
    ap.add_argument("--label", default="ours", help="impl name of the library's rows (e.g. which kernels ran)")
    ap.add_argument("--no-sdpa", action="store_true", help="time the library only")
    args = ap.parse_args()
    lib = Lib(args.lib)
    dev = torch.cuda.get_device_name()
    sha = args.sha
    try:
        sha = sha or subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:
        sha = "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = []
    print(f"device {dev}, torch {torch.__version__}, sha {sha}")
    print(f"{'Hq/Hkv':>7} {'Lq':>5} {'Lkv':>7} {'impl':>6} {'fwd ms':>8} {'TF/s':>6} {'f+b ms':>8} {'TF/s':>6} {'%790':>5}")
    for Hq, Hkv, Lq, Lkv in SHAPES:
        rows, flops, err = bench_shape(lib, Hq, Hkv, Lq, Lkv, reps=args.reps, label=args.label, sdpa=not args.no_sdpa)
        for impl, (tf, tfb) in rows.items():
            tff, tffb = flops / tf / 1e9, 3.5 * flops / tfb / 1e9
            print(f"{Hq:>3}/{Hkv:<3} {Lq:>5} {Lkv:>7} {impl:>6} {tf:8.3f} {tff:6.0f} {tfb:8.3f} {tffb:6.0f} {100*tffb/790:5.1f}")
            out.append(dict(device=dev, git_sha=sha, date=date, dtype="bf16", D=128, B=1, Hq=Hq, Hkv=Hkv, Lq=Lq,
                            Lkv=Lkv, impl=impl, fwd_ms=round(tf, 4), fwd_tflops=round(tff, 1),
                            fwd_bwd_ms=round(tfb, 4), fwd_bwd_tflops=round(tffb, 1),
                            ours_fwd_rel_err_vs_sdpa=f"{err:.2e}"))
        best = min(rows[n][1] for n in ("flash", "cudnn") if n in rows) if len(rows) > 1 else float("nan")
        print(f"{'':>22} {args.label}/best fwd+bwd = {rows[args.label][1] / best:.2f}x   fwd rel err vs SDPA fp32 {err:.1e}")
    path = args.out or new_results_path("gpu_kernels")
    write_csv(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
