"""Double backward through any of the package's autograd Functions raises a clear
RuntimeError (their backward has no derivative of its own), instead of giving
gradients that autograd treats as constants; a single backward, with or without
create_graph=True, still gives the reference gradients."""

from __future__ import annotations

import inspect

import pytest
import torch

import lvxattn
from lvxattn import api, layers
from lvxattn.layers import AttentionSettings, CrossAttentionStack, KvProjection, RecomputedKvAttention, SharedVisual
from lvxattn.reference import attention

MESSAGE = "double backward .* is not supported"


def issue_penalty():
    """The issue's input: dQ with create_graph=True, then a penalty on it in the loss."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 2, 16, generator=gen).requires_grad_() for n in (6, 20, 20))
    g = torch.randn(1, 6, 2, 16, generator=gen)
    o = lvxattn.cross_attention(q, k, v)
    dq, = torch.autograd.grad(o, q, g, create_graph=True)
    return (o * g).sum() + (dq * dq).sum()


def kv_projection_penalty():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 20, 10, generator=gen).requires_grad_()
    wk, wv = (torch.randn(16, 10, generator=gen).requires_grad_() for _ in range(2))
    k, v = KvProjection.apply(x, wk, wv, 2, 8, 1e-5, None)
    dx, = torch.autograd.grad((k.sum() + v.pow(2).sum()), x, create_graph=True)
    return dx.pow(2).sum()


def recomputed_attention_penalty():
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(1, 6, 4, 8, generator=gen).requires_grad_()
    x = torch.randn(1, 20, 10, generator=gen).requires_grad_()
    wk, wv = (torch.randn(16, 10, generator=gen).requires_grad_() for _ in range(2))
    o = RecomputedKvAttention.apply(q, x, wk, wv, None, 2, 8, 1e-5, AttentionSettings(), None)
    dq, = torch.autograd.grad(o.pow(2).sum(), q, create_graph=True)
    return dq.pow(2).sum()


def shared_visual_penalty():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 20, 10, generator=gen).requires_grad_()
    y = SharedVisual.apply(x, layers.VisualGrad())
    dx, = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    return dx.pow(2).sum()


def stack_penalty(recompute):
    def penalty():
        torch.manual_seed(4)
        model = CrossAttentionStack(2, text_dim=12, visual_dim=10, heads=4, kv_heads=2, head_dim=8,
                                    recompute=recompute, gate_init=0.5)
        text = torch.randn(1, 6, 12)
        visual = torch.randn(1, 20, 10, requires_grad=True)
        out = model(text, visual)
        grads = torch.autograd.grad(out.pow(2).sum(), [visual, *model.parameters()], create_graph=True)
        return sum(g.pow(2).sum() for g in grads)
    return penalty


PENALTIES = {
    api._CrossAttentionFunction: issue_penalty,
    KvProjection: kv_projection_penalty,
    RecomputedKvAttention: recomputed_attention_penalty,
    SharedVisual: shared_visual_penalty,
}


def test_every_autograd_function_of_the_package_is_covered():
    found = {obj for module in (api, layers) for _, obj in inspect.getmembers(module, inspect.isclass)
             if issubclass(obj, torch.autograd.Function) and obj.__module__.startswith("lvxattn")
             and obj.__module__ != "lvxattn.first_order"}
    assert found == set(PENALTIES)


@pytest.mark.parametrize("function", list(PENALTIES), ids=lambda f: f.__name__)
def test_double_backward_raises(function):
    loss = PENALTIES[function]()
    assert loss.requires_grad  # the gradients are not silently constants
    with pytest.raises(RuntimeError, match=MESSAGE):
        loss.backward()


@pytest.mark.parametrize("recompute", [True, False])
def test_double_backward_through_the_layers_raises(recompute):
    loss = stack_penalty(recompute)()
    with pytest.raises(RuntimeError, match=MESSAGE):
        loss.backward()


def test_the_error_names_the_function():
    with pytest.raises(RuntimeError, match="double backward through lvxattn.cross_attention is not supported"):
        issue_penalty().backward()


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_backward_matches_the_reference(create_graph, dtype):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, h, 16, generator=gen).to(dtype) for n, h in ((9, 4), (30, 2), (30, 2)))
    g = torch.randn(2, 9, 4, 16, generator=gen).to(dtype)
    ranges = lvxattn.masks.interleaved_ranges(2, 9, 30, 3, "latest")
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o = lvxattn.cross_attention(qg, kg, vg, q_ranges=ranges)
    grads = torch.autograd.grad(o, (qg, kg, vg), g, create_graph=create_graph)
    assert all(t.requires_grad == create_graph for t in grads)
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    o_ref, _ = attention(qr, kr, vr, ranges)
    want = torch.autograd.grad(o_ref, (qr, kr, vr), g.double())
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    for got, ref in zip(grads, want):
        assert float((got.detach().double() - ref).norm() / ref.norm()) < tol


def test_layers_first_order_gradients_are_the_same_with_create_graph():
    """create_graph=True changes nothing about the first-order gradients of the stack."""
    results = []
    for create_graph in (False, True):
        torch.manual_seed(6)
        model = CrossAttentionStack(2, text_dim=12, visual_dim=10, heads=4, kv_heads=2, head_dim=8, gate_init=0.5)
        text = torch.randn(1, 6, 12)
        visual = torch.randn(1, 20, 10, requires_grad=True)
        out = model(text, visual)
        grads = torch.autograd.grad(out.pow(2).sum(), [visual, *model.parameters()], create_graph=create_graph)
        results.append([t.detach() for t in grads])
    for a, b in zip(*results):
        assert torch.equal(a, b)
