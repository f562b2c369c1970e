"""GPU tests of the CUDA backend through the public API (lvxattn.cross_attention*):
O, LSE and dQ/dK/dV against the float64 reference (lvxattn.reference), bf16/fp16, GQA,
masks, odd lengths, split-KV, and agreement with the CPU backend. Skipped without a GPU."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

lvxattn = pytest.importorskip("lvxattn")
from lvxattn import masks  # noqa: E402
from lvxattn.reference import attention as ref_attention, rel_err  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not lvxattn.cuda_built(), reason="built without the CUDA backend"),
]

TOL = {torch.bfloat16: 1e-2, torch.float16: 5e-3, torch.float32: 1e-4}

# (B, Lq, Lkv, Hq, Hkv, D): odd lengths, GQA, all head dims, short-query split-KV cases,
# and every head dim over many tiles (on Hopper the sm_90a kernels for D = 64, 96, 128:
# their pipelines, odd and even tile counts, the 128-row backward query tiles of D = 64
# and the 64 + 32 dQ column parts of D = 96; run_gpus.sh runs this file again with
# LVX_CUDA_SM90=0); the last two for the sm_90a forward's ping-pong of its two consumer
# warpgroups: one KV tile (no turn) and nine, with query tiles whose second warpgroup
# (rows 64-127) has no row. The sm_90a backward without a mask forms dQ one tile late
# where a KV block has at least 8 query tiles of its heads (attend_launch.cuh,
# kBwdLateItems): (1, 130, 257, 8, 2, 128), (2, 517, 1300, ...) and both D = 96 shapes of
# more than one tile; the others have fewer and take the per-tile barrier.
SHAPES = [
    (2, 77, 300, 4, 2, 64),
    (1, 130, 257, 8, 2, 128),
    (2, 517, 1300, 4, 2, 128),
    (1, 40, 2100, 2, 1, 128),
    (2, 64, 64, 4, 4, 64),
    (1, 50, 200, 4, 2, 32),
    (1, 70, 300, 4, 1, 96),
    (2, 517, 1300, 4, 2, 64),
    (1, 40, 2100, 2, 1, 64),
    (2, 300, 1100, 6, 2, 96),
    (1, 40, 2100, 2, 1, 96),
    (1, 50, 100, 2, 1, 128),
    (2, 150, 1100, 4, 2, 128),
]


def make_inputs(shape, dtype, mask, seed):
    B, Lq, Lkv, Hq, Hkv, D = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, Lq, Hq, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, Lkv, Hkv, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, Lkv, Hkv, D, device="cuda", dtype=dtype, generator=g)
    dout = torch.randn(B, Lq, Hq, D, device="cuda", dtype=dtype, generator=g)
    ranges = None if mask is None else masks.interleaved_ranges(B, Lq, Lkv, 5, mask, lead=3).cuda()
    return q, k, v, dout, ranges


def run_against_float64(q, k, v, dout, ranges, scale):
    """The library's forward and backward on these inputs, and the float64 reference's:
    ``(o, lse, (dq, dk, dv)), (o_ref, lse_ref, (dq_ref, dk_ref, dv_ref))``."""
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    o, lse = lvxattn.cross_attention_forward(qg, kg, vg, q_ranges=ranges, scale=scale)
    o.backward(dout)
    qr, kr, vr = (x.double().requires_grad_() for x in (q, k, v))
    o_ref, lse_ref = ref_attention(qr, kr, vr, ranges, scale)
    o_ref.backward(dout.double())
    return (o, lse, (qg.grad, kg.grad, vg.grad)), (o_ref, lse_ref, (qr.grad, kr.grad, vr.grad))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", [None, "all_previous", "latest"])
def test_forward_backward_match_float64(dtype, shape, mask):
    q, k, v, dout, ranges = make_inputs(shape, dtype, mask, seed=sum(shape) + len(mask or ""))
    scale = 1.1 / math.sqrt(shape[-1])
    (o, lse, grads), (o_ref, lse_ref, grads_ref) = run_against_float64(q, k, v, dout, ranges, scale)
    tol = TOL[dtype]
    assert torch.isfinite(o).all() and torch.isfinite(grads[0]).all()
    assert rel_err(o, o_ref) < tol
    empty = torch.isinf(lse_ref)
    assert torch.equal(torch.isinf(lse) & (lse < 0), empty)
    assert rel_err(lse[~empty], lse_ref[~empty]) < tol
    if empty.any():  # rows that see no key: O = 0 and zero gradient
        rows = empty.transpose(1, 2)  # [B, Lq, Hq]
        assert o[rows].abs().max() == 0
        assert grads[0][rows].abs().max() == 0
    for got, want in zip(grads, grads_ref):
        assert rel_err(got, want) < tol


@pytest.mark.parametrize("D", [64, 96, 128])
@pytest.mark.parametrize("scale", [-0.9, 0.0, 2.5])
@pytest.mark.parametrize("mask", [None, "latest"])
def test_any_scale_matches_float64(D, scale, mask):
    """The forward takes the row max of the raw scores where no tile needs a mask (the
    min for a negative scale) and scales first where one does or where the scale is 0:
    every case against the float64 reference, forward and backward, bf16."""
    shape = (2, 150, 700, 4, 2, D)
    q, k, v, dout, ranges = make_inputs(shape, torch.bfloat16, mask, seed=D + int(10 * scale))
    (o, lse, grads), (o_ref, lse_ref, grads_ref) = run_against_float64(q, k, v, dout, ranges, scale)
    empty = torch.isinf(lse_ref)
    assert torch.equal(torch.isinf(lse) & (lse < 0), empty)
    assert rel_err(o, o_ref) < TOL[torch.bfloat16]
    assert rel_err(lse[~empty], lse_ref[~empty]) < TOL[torch.bfloat16]
    for got, want in zip(grads, grads_ref):
        if want.abs().max() > 0:  # scale 0: dQ and dK are exactly 0
            assert rel_err(got, want) < TOL[torch.bfloat16]
        else:
            assert got.abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_and_cpu_backends_agree(dtype):
    shape = (2, 45, 190, 4, 2, 64)
    q, k, v, dout, ranges = make_inputs(shape, dtype, "latest", seed=7)
    outs = {}
    for dev in ("cuda", "cpu"):
        qg, kg, vg = (x.to(dev).clone().requires_grad_() for x in (q, k, v))
        o, lse = lvxattn.cross_attention_forward(qg, kg, vg, q_ranges=None if ranges is None else ranges.to(dev))
        o.backward(dout.to(dev))
        outs[dev] = [t.detach().cpu() for t in (o, lse, qg.grad, kg.grad, vg.grad)]
    tol = TOL[dtype]
    for gpu, cpu in zip(outs["cuda"], outs["cpu"]):
        finite = torch.isfinite(cpu)
        assert torch.equal(finite, torch.isfinite(gpu))
        assert rel_err(gpu[finite], cpu[finite]) < tol


def test_default_stream_ordering():
    """Inputs made on torch's default stream right before the call must be read after
    they are written (the backend issues on the stream torch reports)."""
    B, Lq, Lkv, H, D = 1, 256, 65536, 8, 128
    q = torch.randn(B, Lq, H, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, Lkv, H, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, Lkv, H, D, device="cuda", dtype=torch.bfloat16)
    o, _ = lvxattn.cross_attention_forward(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float()).transpose(1, 2)
    assert rel_err(o, ref) < TOL[torch.bfloat16]


def test_persistent_backward_over_few_blocks():
    """The sm_90a backward without q_ranges is persistent (one block per SM walks KV blocks
    in turn) where KV blocks have few query tiles; the float64 checks above have fewer KV
    blocks than a Hopper card has SMs, so they run again in a process where
    LVX_CUDA_BWD_BLOCKS=3 makes each block walk dozens of KV blocks of different heads and
    batches at every shape and head dim (the masked cases run one block per KV block)."""
    shapes = [sh for sh in SHAPES if sh[2] >= 1100 or sh[0] * sh[3] >= 8]
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import test_gpu_kernels as t\n"
        "n = 0\n"
        "for shape in %r:\n"
        "    for mask in (None, 'all_previous', 'latest'):\n"
        "        for dtype in (torch.bfloat16, torch.float16):\n"
        "            t.test_forward_backward_match_float64(dtype, shape, mask); n += 1\n"
        "print('checked', n)\n" % (shapes,))
    run = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__))],
                         env=dict(os.environ, LVX_CUDA_BWD_BLOCKS="3"), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert f"checked {6 * len(shapes)}" in run.stdout


def test_bad_backward_block_count_is_reported():
    code = ("import torch, lvxattn; q = torch.randn(1, 8, 2, 64, device='cuda', dtype=torch.bfloat16);"
            "lvxattn.cross_attention(q, q, q); torch.cuda.synchronize()")
    run = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LVX_CUDA_BWD_BLOCKS="0"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "LVX_CUDA_BWD_BLOCKS must be a positive integer, got '0'" in run.stderr


def test_unsupported_head_dim_is_reported():
    q = torch.randn(1, 8, 2, 40, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 16, 2, 40, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head dim 40 is not built for the CUDA backend"):
        lvxattn.cross_attention(q, k, k)
        torch.cuda.synchronize()
