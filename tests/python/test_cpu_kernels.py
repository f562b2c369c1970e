"""The CPU kernel dispatch: it picks a variant on this CPU, and every variant this
CPU can run (AVX-512, AVX2, baseline x86-64; the tile products in BLAS) agrees with
the float64 reference for every storage dtype, with GQA and masks."""

import os

import pytest
import torch

import lvxattn
from lvxattn import _core
from cases import TOL, random_ranges
from lvxattn.reference import attention, rel_err


def test_dispatch_picks_a_variant_on_this_cpu():
    available = _core.cpu_isas_available()
    assert available and available[-1] == "baseline"
    if "LVX_CPU_ISA" not in os.environ:
        assert _core.cpu_isa() == available[0]  # the best one
    described = _core.cpu_kernels_describe()
    print(f"\nCPU kernels: {described}")
    assert described.startswith(_core.cpu_isa() + " kernels, ")
    assert not _core.set_cpu_isa("no-such-isa")
    assert _core.cpu_isa() in available


@pytest.mark.parametrize("isa", _core.cpu_isas_available())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_variant_matches_reference(isa, dtype):
    picked = _core.cpu_isa()
    assert _core.set_cpu_isa(isa)
    try:
        B, Lq, Lkv, Hq, Hkv, D = 2, 150, 600, 8, 2, 64
        gen = torch.Generator().manual_seed(11)
        q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype).requires_grad_()
        k = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype).requires_grad_()
        v = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype).requires_grad_()
        do = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
        ranges = random_ranges(B, Lq, Lkv, gen)
        o, lse = lvxattn.cross_attention_forward(q, k, v, q_ranges=ranges)
        o.backward(do)
        qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
        o_ref, lse_ref = attention(qr, kr, vr, ranges)
        o_ref.backward(do.double())
        tol = TOL[dtype]
        assert rel_err(o, o_ref) < tol
        assert rel_err(lse, lse_ref) < tol / 10
        assert rel_err(q.grad, qr.grad) < tol * 2
        assert rel_err(k.grad, kr.grad) < tol * 2
        assert rel_err(v.grad, vr.grad) < tol * 2
    finally:
        _core.set_cpu_isa(picked)
