"""Times lvxattn's public call on one GPU against torch SDPA (cuDNN and flash) in one
process, on the single-GPU cross-attention shapes of issue 19 (ANCHORS.md section 4)
plus head dim 96 and B > 1 GQA shapes, and writes a CSV with the card, date and git sha.

Ours is ``lvxattn.cross_attention(q, k, v)`` of the installed package with q/k/v
``[B, L, H, D]`` (P = 1, no communicator): forward, and forward + backward through
autograd (``o.backward(dout)``), exactly as a user calls it. SDPA gets ``[B, H, L, D]``
inputs (its best layout) and ``enable_gqa`` for Hq != Hkv; its backward is
``torch.autograd.grad``. Times are medians of ``triton.testing.do_bench`` (CUDA events;
a plain event loop when triton is absent), all implementations in the same process.
FLOPs: 4·B·Hq·Lq·Lkv·D forward, 3.5x that for forward + backward (5 GEMMs backward).
With ``--rounds N`` each shape's implementations are timed N times in alternating order
(ours, cuDNN, flash, then flash, cuDNN, ours, ...) and the medians kept: at the power cap
the GPU's clock depends on what ran just before, so one pass in a fixed order favours
whichever runs first.

With ``--lib`` the step kernels are timed instead, through cuda/dev/liblvx_cuda_dev.so
(built by cuda/dev/run_playground.sh, called with tensor.data_ptr() via ctypes):
fwd = fill(o, lse) + attend_fwd_step; fwd+bwd adds row_dot, fill(dq, dk, dv) and
attend_bwd_step (fp32 gradients). That mode is for profiling (cuda/dev/ncu_sm90.sh).

With ``--kernel-times`` each implementation's calls are also profiled (torch.profiler, three
calls after an idle GPU) and the CSV gets the sums of their kernels' device times: what the
do_bench time holds beyond them (clocks under sustained load, L2 flushed before each call,
gaps between kernels), set side by side for ours and SDPA's.

Each row also says what the GPU ran at during the forward+backward timing (mean SM clock,
board power, highest temperature, the driver's clock event reasons; experiments/gpu_state.py,
through nvidia-ml-py where it is installed, else empty columns).

usage: python experiments/bench_gpu_kernels.py --out gpu_kernels.csv [--shapes ...] [--reps-ms 200] [--kernel-times]
       [--rounds N] [--no-flash]
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import git_sha, new_results_path, write_csv  # noqa: E402
from gpu_state import GpuState, csv_columns, describe  # noqa: E402

# (B, Hq, Hkv, Lq, Lkv, D, dtype): issue 19's table, then D = 96 and B > 1 GQA shapes.
SHAPES = [
    (1, 16, 16, 1024, 16384, 128, "bf16"),
    (1, 16, 16, 256, 32768, 128, "bf16"),
    (1, 32, 8, 1024, 16384, 128, "bf16"),
    (1, 16, 16, 4096, 65536, 128, "bf16"),
    (1, 32, 8, 256, 131072, 128, "bf16"),
    (1, 16, 16, 1024, 131072, 128, "fp16"),
    (1, 16, 16, 8192, 32768, 128, "fp16"),
    (1, 16, 16, 2048, 262144, 128, "fp16"),
    (1, 32, 8, 2048, 131072, 128, "bf16"),
    (1, 16, 16, 1024, 65536, 64, "bf16"),
    (1, 16, 16, 256, 65536, 64, "bf16"),
    (1, 16, 16, 1024, 65536, 96, "bf16"),
    (1, 16, 16, 256, 65536, 96, "fp16"),
    (2, 32, 8, 1024, 16384, 128, "bf16"),
    (2, 32, 8, 1024, 32768, 64, "bf16"),
    (4, 16, 4, 512, 16384, 96, "bf16"),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def parse_shapes(text: str):
    """'B,Hq,Hkv,Lq,Lkv,D,dtype;...' -> list of tuples."""
    out = []
    for item in filter(None, text.split(";")):
        f = item.split(",")
        out.append((*(int(x) for x in f[:6]), f[6]))
    return out


def bench_ms(fn, rep_ms: float) -> float:
    """Median time of fn in ms (CUDA events)."""
    try:
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=max(25, rep_ms // 4), rep=rep_ms, return_mode="median"))
    except ImportError:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        est = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        est[0].record()
        fn()
        est[1].record()
        torch.cuda.synchronize()
        n = max(5, min(200, int(rep_ms / max(est[0].elapsed_time(est[1]), 1e-3))))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
        return times[len(times) // 2]


def kernel_times(fn, calls: int = 3) -> dict:
    """Device time (ms) per call of fn by kernel name (template arguments dropped), from
    torch.profiler over `calls` calls after one warm-up; memsets and copies count as kernels."""
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


class StepLib:
    """The step kernels through the development shim (--lib)."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        P, L, I, Fl = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
        self.lib.lvx_dev_fwd.argtypes = [P, I, L, L, L, L, L, L, P, P, P, P, L, Fl, P, P]
        self.lib.lvx_dev_bwd.argtypes = [P, I, L, L, L, L, L, L, P, P, P, P, P, P, P, L, Fl, P, P, P]
        self.lib.lvx_dev_row_dot.argtypes = [P, I, L, L, L, L, P, P, P]
        self.lib.lvx_dev_fill.argtypes = [P, P, Fl, L]

    @staticmethod
    def _s():
        # torch's default stream is the legacy one (handle 0); pass cudaStreamLegacy (0x1).
        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream or 1)

    def closures(self, q, k, v, dout, scale):
        B, Lq, Hq, D = q.shape
        Lkv, Hkv = k.shape[1], k.shape[2]
        dt = DTYPE_CODE[q.dtype]
        o = torch.empty(B, Lq, Hq, D, device=q.device, dtype=torch.float32)
        lse = torch.empty(B, Hq, Lq, device=q.device, dtype=torch.float32)
        dl, dq = torch.empty_like(lse), torch.empty_like(o)
        dk = torch.empty(B, Lkv, Hkv, D, device=q.device, dtype=torch.float32)
        dv = torch.empty_like(dk)
        o_st = torch.empty_like(q)
        lib = self.lib

        def fill(t, x):
            assert lib.lvx_dev_fill(self._s(), t.data_ptr(), x, t.numel()) == 0

        def fwd():
            fill(o, 0.0)
            fill(lse, -math.inf)
            assert lib.lvx_dev_fwd(self._s(), dt, B, Lq, Lkv, Hq, Hkv, D, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                   None, 0, scale, o.data_ptr(), lse.data_ptr()) == 0
            return o

        def fwd_bwd():
            fwd()
            assert lib.lvx_dev_row_dot(self._s(), dt, B, Lq, Hq, D, dout.data_ptr(), o_st.data_ptr(),
                                       dl.data_ptr()) == 0
            for t in (dq, dk, dv):
                fill(t, 0.0)
            assert lib.lvx_dev_bwd(self._s(), dt, B, Lq, Lkv, Hq, Hkv, D, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                   dout.data_ptr(), lse.data_ptr(), dl.data_ptr(), None, 0, scale, dq.data_ptr(),
                                   dk.data_ptr(), dv.data_ptr()) == 0

        fwd()
        torch.cuda.synchronize()
        o_st.copy_(o)
        return fwd, fwd_bwd


def public_closures(q, k, v, dout, scale):
    """lvxattn.cross_attention, forward and forward + backward through autograd."""
    import lvxattn

    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

    def fwd():
        with torch.no_grad():
            return lvxattn.cross_attention(q, k, v, scale=scale)

    def fwd_bwd():
        for x in (qg, kg, vg):
            x.grad = None
        lvxattn.cross_attention(qg, kg, vg, scale=scale).backward(dout)

    return fwd, fwd_bwd


def sdpa_closures(q, k, v, dout, scale, backend):
    gqa = q.shape[2] != k.shape[2]
    qt, kt, vt = (x.transpose(1, 2).contiguous().detach().requires_grad_() for x in (q, k, v))
    dot = dout.transpose(1, 2).contiguous()

    def fwd():
        with sdpa_kernel(backend), torch.no_grad():
            return F.scaled_dot_product_attention(qt, kt, vt, scale=scale, enable_gqa=gqa)

    def fwd_bwd():
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(qt, kt, vt, scale=scale, enable_gqa=gqa)
            torch.autograd.grad(out, (qt, kt, vt), dot)

    return fwd, fwd_bwd


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make_inputs(shape):
    """q, k, v ([B, L, H, D]) and an output gradient dout (like q) on the GPU for a shape
    tuple (B, Hq, Hkv, Lq, Lkv, D, dtype name), standard normal, seeded by the shape, and the
    softmax scale 1/sqrt(D)."""
    B, Hq, Hkv, Lq, Lkv, D, dname = shape
    dtype = DTYPES[dname]
    gen = torch.Generator(device="cuda").manual_seed(Lq + Lkv + D)
    q = torch.randn(B, Lq, Hq, D, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(B, Lkv, Hkv, D, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(B, Lkv, Hkv, D, device="cuda", dtype=dtype, generator=gen)
    dout = torch.randn(B, Lq, Hq, D, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, dout, 1.0 / math.sqrt(D)


def bench_shape(shape, rep_ms, lib=None, sdpa=True, label="ours", kernels=False, rounds=1, flash=True):
    """Times each implementation on one shape. Returns ({impl: (fwd ms, fwd+bwd ms, kernel
    ms of one forward, of one forward+backward, GpuState summary of the forward+backward
    timing)}, forward FLOPs, our forward's relative error against SDPA); the kernel sums
    (kernel_times) only with `kernels`, else None. With rounds > 1 the implementations are
    timed `rounds` times, in the listed order, then reversed, and so on (so that none always
    runs first, on the coolest GPU, or right after the slowest), and each time is the median
    over rounds; the GPU state is that of the median round's forward+backward timing."""
    B, Hq, Hkv, Lq, Lkv, D, dname = shape
    q, k, v, dout, scale = make_inputs(shape)
    impls = {label: (lib.closures(q, k, v, dout, scale) if lib else public_closures(q, k, v, dout, scale))}
    if sdpa:
        impls["cudnn"] = sdpa_closures(q, k, v, dout, scale, SDPBackend.CUDNN_ATTENTION)
        if flash:
            impls["flash"] = sdpa_closures(q, k, v, dout, scale, SDPBackend.FLASH_ATTENTION)
    times: dict = {name: [] for name in impls}
    outs = {}
    for name, (fwd, _) in list(impls.items()):
        try:
            out = fwd()
            torch.cuda.synchronize()
            outs[name] = out.transpose(1, 2) if name in ("cudnn", "flash") else out
        except Exception as e:  # a backend may refuse a shape
            print(f"  {name} failed: {str(e).splitlines()[0][:160]}")
            del impls[name]
        torch.cuda.empty_cache()
    for r in range(max(1, rounds)):
        for name in list(impls) if r % 2 == 0 else list(impls)[::-1]:
            fwd, fwd_bwd = impls[name]
            try:
                tf = bench_ms(fwd, rep_ms)
                with GpuState() as gpu:
                    tfb = bench_ms(fwd_bwd, rep_ms)
            except Exception as e:  # e.g. a backward the backend refuses: the shape goes on without it
                print(f"  {name} failed: {str(e).splitlines()[0][:160]}")
                del impls[name]
                torch.cuda.empty_cache()
                continue
            times[name].append((tf, tfb, gpu.summary()))
    rows = {}
    for name in impls:
        got = times[name]
        tf = sorted(x[0] for x in got)[len(got) // 2]
        mid = sorted(got, key=lambda x: x[1])[len(got) // 2]
        fwd, fwd_bwd = impls[name]
        ks = (sum(kernel_times(fwd).values()), sum(kernel_times(fwd_bwd).values())) if kernels else (None, None)
        rows[name] = (tf, mid[1]) + ks + (mid[2],)
    ref = outs.get("cudnn", outs.get("flash"))
    err = rel_err(outs[label], ref) if label in outs and ref is not None else float("nan")
    return rows, 4.0 * B * Hq * Lq * Lkv * D, err


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None,
                    help="CSV file to write (default: a new file under experiments/results/new/; never a committed one)")
    ap.add_argument("--shapes", default=None, help="'B,Hq,Hkv,Lq,Lkv,D,dtype;...' instead of the default list")
    ap.add_argument("--reps-ms", type=float, default=200.0, help="time budget per measurement (do_bench rep, ms)")
    ap.add_argument("--lib", default=None, help="time the step kernels through this dev shim instead")
    ap.add_argument("--sha", default=None, help="git sha of the tree (when .git is not there)")
    ap.add_argument("--label", default="ours", help="name of the library's rows")
    ap.add_argument("--no-sdpa", action="store_true", help="time the library only")
    ap.add_argument("--no-flash", action="store_true", help="leave SDPA's flash backend out (cuDNN only)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time the implementations this many times per shape, alternating their order, "
                         "and keep the medians (default 1)")
    ap.add_argument("--kernel-times", action="store_true",
                    help="also sum each call's kernel device times (torch.profiler, 3 calls after an idle GPU), "
                         "to set against the do_bench times")
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes) if args.shapes else SHAPES
    lib = StepLib(args.lib) if args.lib else None
    dev = torch.cuda.get_device_name()
    sha = args.sha or git_sha()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    mode = "step kernels (dev shim)" if lib else "lvxattn.cross_attention"
    kernels = os.environ.get("LVX_CUDA_SM90", "1")
    print(f"device {dev}, torch {torch.__version__}, sha {sha}, {date}, ours = {mode}, LVX_CUDA_SM90={kernels}")
    print(f"{'B':>2} {'Hq/Hkv':>6} {'Lq':>5} {'Lkv':>7} {'D':>4} {'dt':>4} {'impl':>6} {'fwd ms':>8} {'TF/s':>5} "
          f"{'f+b ms':>8} {'TF/s':>5}  ours/cudnn f+b (fwd)"
          + ("  [kernels: fwd, f+b ms; timed/kernels f+b]" if args.kernel_times else ""))
    out = []
    for shape in shapes:
        B, Hq, Hkv, Lq, Lkv, D, dname = shape
        rows, flops, err = bench_shape(shape, args.reps_ms, lib, not args.no_sdpa, args.label, args.kernel_times,
                                       args.rounds, not args.no_flash)
        for impl, (tf, tfb, kf, kfb, gpu) in rows.items():
            tff, tffb = flops / tf / 1e9, 3.5 * flops / tfb / 1e9
            ratio = ""
            if impl == args.label and "cudnn" in rows:
                ratio = f"  {tfb / rows['cudnn'][1]:.2f} ({tf / rows['cudnn'][0]:.2f})"
            kcols = f"  [{kf:.3f}, {kfb:.3f}; {tfb / kfb:.2f}]" if kfb else ""
            gcols = f"  {describe(gpu)}" if gpu.get("sm_mhz") not in (None, "") else ""
            print(f"{B:>2} {Hq:>3}/{Hkv:<2} {Lq:>5} {Lkv:>7} {D:>4} {dname:>4} {impl:>6} {tf:8.3f} {tff:5.0f} "
                  f"{tfb:8.3f} {tffb:5.0f}{ratio}{kcols}{gcols}")
            out.append(dict(device=dev, git_sha=sha, date=date, torch=torch.__version__, ours=mode,
                            lvx_cuda_sm90=kernels, B=B, Hq=Hq, Hkv=Hkv, Lq=Lq, Lkv=Lkv, D=D, dtype=dname,
                            impl=impl, rounds=args.rounds, fwd_ms=round(tf, 4), fwd_tflops=round(tff, 1), fwd_bwd_ms=round(tfb, 4),
                            fwd_bwd_tflops=round(tffb, 1),
                            ours_over_cudnn_fwd_bwd=round(tfb / rows["cudnn"][1], 3) if ratio else "",
                            ours_fwd_rel_err_vs_sdpa=f"{err:.2e}" if impl == args.label else "",
                            fwd_kernels_ms=round(kf, 4) if kf else "", fwd_bwd_kernels_ms=round(kfb, 4) if kfb else "",
                            **csv_columns(gpu)))
        print(f"{'':>40} fwd rel err vs SDPA {err:.1e}")
    if out:
        path = args.out or new_results_path("gpu_kernels")
        write_csv(path, out)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
