"""Single-process cross_attention against the float64 reference: dtypes, GQA,
head dims, odd lengths, batches, masks; merge of split steps."""

import itertools

import pytest
import torch

import lvxattn
from cases import TOL, random_ranges
from lvxattn.reference import attention, rel_err

HEADS = [(1, 1), (8, 8), (8, 2), (32, 8)]
DIMS = [32, 64, 80, 128]
LENGTHS = [(1, 1), (1, 77), (13, 1), (65, 129), (100, 300), (130, 513)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MASKS = [None, "random", "all_previous", "latest"]


def make_cases():
    # A covering design: every heads × dims pair, every length, dtype, mask and batch
    # appear, without the full product (which would take minutes on two cores).
    cases = []
    for n, ((hq, hkv), d) in enumerate(itertools.product(HEADS, DIMS)):
        lq, lkv = LENGTHS[n % len(LENGTHS)]
        for m, dtype in enumerate(DTYPES):
            mask = MASKS[(n + m) % len(MASKS)]
            batch = 3 if (n + m) % 3 == 0 else 1
            cases.append((batch, lq, lkv, hq, hkv, d, dtype, mask))
    return cases


def build_ranges(kind, B, Lq, Lkv, gen):
    if kind is None:
        return None
    if kind == "random":
        return random_ranges(B, Lq, Lkv, gen)
    return lvxattn.masks.interleaved_ranges(B, Lq, Lkv, num_images=min(3, Lkv), style=kind)


@pytest.mark.parametrize("B,Lq,Lkv,Hq,Hkv,D,dtype,mask", make_cases())
def test_forward_backward_match_reference(B, Lq, Lkv, Hq, Hkv, D, dtype, mask):
    gen = torch.Generator().manual_seed(B * 1000 + Lq * 7 + Lkv + Hq + D)
    q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype).requires_grad_()
    ranges = build_ranges(mask, B, Lq, Lkv, gen)
    do = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)

    o, lse = lvxattn.cross_attention_forward(q, k, v, q_ranges=ranges)
    o.backward(do)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    o_ref, lse_ref = attention(qr, kr, vr, ranges)
    o_ref.backward(do.double())

    tol = TOL[dtype]
    assert o.dtype == dtype and o.shape == q.shape
    assert rel_err(o, o_ref) < tol
    assert rel_err(lse, lse_ref) < tol / 10
    assert rel_err(q.grad, qr.grad) < tol * 2
    assert rel_err(k.grad, kr.grad) < tol * 2
    assert rel_err(v.grad, vr.grad) < tol * 2
    if ranges is not None:
        empty = (ranges[..., 1] <= ranges[..., 0])
        if empty.any():
            assert torch.all(o[empty] == 0)
            assert torch.all(q.grad[empty] == 0)
            assert torch.isneginf(lse.transpose(1, 2)[empty]).all()


def test_custom_scale_and_default_scale():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 9, 4, 16, generator=gen) for _ in range(3))
    for scale in (None, 0.05, -0.3, 2.0):
        o = lvxattn.cross_attention(q, k, v, scale=scale)
        o_ref, _ = attention(q, k, v, scale=scale)
        assert rel_err(o, o_ref) < 1e-5


def test_two_kv_halves_merged_equal_one_step():
    """The LSE merge is exact: attention over [K1; K2] equals the merge of the two halves."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 20, 4, 32, generator=gen)
    k, v = torch.randn(1, 100, 2, 32, generator=gen), torch.randn(1, 100, 2, 32, generator=gen)
    o, lse = lvxattn.cross_attention_forward(q, k, v)
    o1, l1 = lvxattn.cross_attention_forward(q, k[:, :37], v[:, :37])
    o2, l2 = lvxattn.cross_attention_forward(q, k[:, 37:], v[:, 37:])
    l = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - l).transpose(1, 2)[..., None]
    w2 = torch.exp(l2 - l).transpose(1, 2)[..., None]
    assert rel_err(o1 * w1 + o2 * w2, o) < 1e-5
    assert rel_err(l, lse) < 1e-6


def test_non_contiguous_inputs_are_accepted():
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(1, 4, 10, 32, generator=gen).transpose(1, 2)  # [1, 10, 4, 32], strided
    k = torch.randn(1, 2, 50, 32, generator=gen).transpose(1, 2)
    v = torch.randn(1, 50, 2, 32, generator=gen)
    o = lvxattn.cross_attention(q, k, v)
    assert rel_err(o, attention(q, k, v)[0]) < 1e-5


def test_views_that_start_mid_storage_are_copied_aligned():
    """The kernels read rows in 16-byte pieces: a contiguous view whose first element is
    not 16-byte aligned is copied before the call, and the gradients still reach it."""
    gen = torch.Generator().manual_seed(10)
    base = torch.randn(1 + 1 * 12 * 2 * 16, generator=gen, dtype=torch.float64).float()
    q = base[1:].view(1, 12, 2, 16).requires_grad_()  # 4 bytes past an aligned start
    assert q.data_ptr() % 16 != 0
    k = torch.randn(1, 30, 1, 16, generator=gen)
    v = torch.randn(1, 30, 1, 16, generator=gen)
    from lvxattn.api import _dense
    assert _dense(q).data_ptr() % 16 == 0 and torch.equal(_dense(q), q)
    o = lvxattn.cross_attention(q, k, v)
    o.sum().backward()
    qr = q.detach().clone().requires_grad_()
    o_ref = attention(qr, k, v)[0]
    o_ref.sum().backward()
    assert rel_err(o, o_ref) < 1e-5
    assert rel_err(q.grad, qr.grad) < 1e-5


def test_nan_propagates_like_reference_and_masked_rows_stay_zero():
    q = torch.randn(1, 4, 2, 16)
    k, v = torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)
    q[0, 0, 1, 0] = float("nan")   # one query row of head 1
    v[0, 3, 0, 0] = float("inf")   # one value of KV head 0
    ranges = torch.tensor([[[0, 8], [0, 8], [0, 0], [4, 8]]], dtype=torch.int32)
    o = lvxattn.cross_attention(q, k, v, q_ranges=ranges)
    o_ref, _ = attention(q, k, v, ranges)
    assert torch.isnan(o[0, 0, 1]).all() and torch.isnan(o_ref[0, 0, 1]).all()
    assert not torch.isfinite(o[0, 1, 0, 0]) and not torch.isfinite(o_ref[0, 1, 0, 0])
    assert torch.isfinite(o[0, 1, 1]).all()    # other heads untouched
    assert torch.all(o[0, 2] == 0)             # a row that sees nothing gives zeros, not NaN
    assert torch.isfinite(o[0, 3, 1]).all()


def test_changing_shapes_in_one_process():
    gen = torch.Generator().manual_seed(11)
    for lq, lkv, d in [(5, 40, 32), (64, 7, 64), (5, 40, 32), (33, 257, 80)]:
        q = torch.randn(2, lq, 4, d, generator=gen)
        k, v = torch.randn(2, lkv, 2, d, generator=gen), torch.randn(2, lkv, 2, d, generator=gen)
        assert rel_err(lvxattn.cross_attention(q, k, v), attention(q, k, v)[0]) < 1e-5

# Argument errors: tests/python/test_reliability.py.
