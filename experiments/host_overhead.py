"""Host time per call of the public API on one GPU, and its parts: where a forward+backward is
short enough that the host, not the GPU, sets the pace (the SDPA table's short-query shapes
on a slow host), this is what it costs.

On a shape whose kernels take less time than the host needs to launch them, N calls back to
back followed by one synchronization take N times the host time of a call; each part below is
timed that way (microseconds per call, median of 5 runs of N calls). Parts: the whole public
forward (no autograd), the whole forward+backward through autograd, SDPA cuDNN's
forward+backward for comparison, and the public call's steps: Python's checks and the plan
(``_plan``), the output allocation and the library's forward (``_run_forward``), the
library's forward alone (``Context.forward``: the backend's launches and timing events),
``torch.cuda.current_stream``, and the library's backward alone. Then a cProfile of the
forward+backward, by internal time.

Usage: ``python experiments/host_overhead.py [--shape 1,2,2,64,1024,128,bf16] [--calls 400]``
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch
from torch.nn.attention import SDPBackend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_gpu_kernels import make_inputs, parse_shapes, public_closures, sdpa_closures  # noqa: E402


def host_us(fn, calls: int) -> float:
    """Median over 5 runs of (wall time of `calls` calls + one synchronization) / calls, in us."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1,2,2,64,1024,128,bf16", help="B,Hq,Hkv,Lq,Lkv,D,dtype (small: host-bound)")
    ap.add_argument("--calls", type=int, default=400)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("host_overhead.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import lvxattn
    from lvxattn import api

    (shape,) = parse_shapes(args.shape)
    q, k, v, dout, scale = make_inputs(shape)
    fwd, fwd_bwd = public_closures(q, k, v, dout, scale)
    _, sdpa_fwd_bwd = sdpa_closures(q, k, v, dout, scale, SDPBackend.CUDNN_ATTENTION)

    call, q2, k2, v2, qr = api._plan(q, k, v, None, "lvx", None, scale, "auto")
    o, lse = api._run_forward(call, q2, k2, v2, qr)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    P = api._ptr

    def core_forward():
        call.ctx.forward(call.plan, P(q2), P(k2), P(v2), 0, P(o), P(lse))

    def core_backward():
        call.ctx.backward(call.plan, P(q2), P(k2), P(v2), 0, P(o), P(lse), P(dout), P(dq), P(dk), P(dv), None)

    parts = [
        ("public forward (no autograd)", fwd),
        ("public forward+backward (autograd)", fwd_bwd),
        ("SDPA cuDNN forward+backward", sdpa_fwd_bwd),
        ("  _plan (checks, problem, context, plan)", lambda: api._plan(q, k, v, None, "lvx", None, scale, "auto")),
        ("  _run_forward (allocation + library forward)", lambda: api._run_forward(call, q2, k2, v2, qr)),
        ("  Context.forward (library)", core_forward),
        ("  Context.backward (library)", core_backward),
        ("  torch.cuda.current_stream", lambda: torch.cuda.current_stream(q.device)),
        ("  torch.empty_like(q) x 3", lambda: (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))),
    ]
    print(f"host time per call, {args.shape}, {args.calls} calls per run, median of 5 runs "
          f"(lvxattn {lvxattn.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()})")
    for name, fn in parts:
        print(f"  {name:48s} {host_us(fn, args.calls):8.1f} us", flush=True)

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        fwd_bwd()
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
    print(f"cProfile of {args.calls} public forward+backward calls:\n" + s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
