"""Cross-attention layers: recompute on/off give the same loss and gradients, both match
an independent float64 reference, and recompute saves N*2*Lkv_local*Hkv*D*bytes.

Single-process tests use ``comm=None``; the ``mpi`` tests split ``COMM_WORLD`` into
communicators of 1, 2 and 3 ranks:
``mpirun -n 3 python -m pytest --with-mpi tests/python/test_layers.py``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from lvxattn import masks, reference, sharding
from lvxattn import layers
from lvxattn.layers import CrossAttentionStack, KvProjection, measure_saved

DIMS = dict(text_dim=12, visual_dim=10, heads=4, kv_heads=2, head_dim=8)
EPS = 1e-5


# ---------------------------------------------------------------------------
# float64 reference of the whole stack on the global sequences (Llama form: k-norm weight on K)


def ref_rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def ref_attention(q, k, v, q_ranges, scale):
    return reference.attention(q, k, v, q_ranges, scale)[0]


def ref_stack(weights, text, visual, q_ranges, heads, kv_heads, head_dim):
    h = text
    batch, lq, lkv = text.shape[0], text.shape[1], visual.shape[1]
    for w in weights:
        a = ref_rms(h, w["input_norm"])
        q = ref_rms((a @ w["q_proj"].T).view(batch, lq, heads, head_dim), w["q_norm"])
        k = ref_rms((visual @ w["k_proj"].T).view(batch, lkv, kv_heads, head_dim), w["k_norm"])
        v = (visual @ w["v_proj"].T).view(batch, lkv, kv_heads, head_dim)
        o = ref_attention(q, k, v, q_ranges, head_dim ** -0.5)
        h = h + torch.tanh(w["gate"]) * (o.reshape(batch, lq, -1) @ w["o_proj"].T)
    return h


def make_problem(layers, batch, lq, lkv, mask_style, seed=0):
    """Global inputs, loss weights and initial parameters, identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, lq, DIMS["text_dim"], generator=gen)
    visual = torch.randn(batch, lkv, DIMS["visual_dim"], generator=gen)
    loss_weights = torch.randn(batch, lq, DIMS["text_dim"], generator=gen)
    q_ranges = None if mask_style == "none" else masks.interleaved_ranges(batch, lq, lkv, 3, mask_style)
    torch.manual_seed(seed + 1)
    model = CrossAttentionStack(layers, **DIMS, gate_init=0.5)
    with torch.no_grad():   # non-trivial norm weights so their gradients are tested too
        for p in model.parameters():
            if p.dim() == 1 and p.numel() > 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model, text, visual, q_ranges, loss_weights


def run_stack(model, text, visual, q_ranges, loss_weights, recompute, comm=None):
    """Loss and gradients (weights summed over ranks, X per shard) of this rank's shard."""
    model.recompute = recompute
    model.settings = type(model.settings)(comm=comm)
    model.zero_grad(set_to_none=True)
    x = visual.clone().requires_grad_(True)
    out = model(text, x, q_ranges)
    loss = (out * loss_weights).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    if comm is not None:
        loss = torch.tensor(comm.allreduce(loss.item()))
        grads = {name: torch.from_numpy(comm.allreduce(g.numpy())) for name, g in grads.items()}
    return loss.detach(), grads, x.grad.clone(), out.detach()


def reference_grads(model, text, visual, q_ranges, loss_weights):
    weights = [{name: p.detach().double().clone().requires_grad_(True) for name, p in layer.named_parameters()}
               for layer in model.layers]
    x = visual.double().requires_grad_(True)
    out = ref_stack(weights, text.double(), x, q_ranges, DIMS["heads"], DIMS["kv_heads"], DIMS["head_dim"])
    loss = (out * loss_weights.double()).sum()
    loss.backward()
    grads = {f"layers.{i}.{name}": t.grad for i, w in enumerate(weights) for name, t in w.items()}
    return loss.detach(), grads, x.grad, out.detach()


def assert_close(got, want, what, rtol=2e-4, atol=2e-5):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------
# Single process


@settings(max_examples=10, deadline=None)
@given(length=st.integers(1, 5), kv_heads=st.integers(1, 3), head_dim=st.integers(1, 6), chunk=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_kv_projection_gradient_float64(length, kv_heads, head_dim, chunk, seed):
    """K = unit-rms-norm(X Wk), V = X Wv and their hand-written backward (chunked
    fp32 norm, fused dX) against finite differences, with chunks smaller than the rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, 7, generator=gen, dtype=torch.float64).requires_grad_()
    wk, wv = (torch.randn(kv_heads * head_dim, 7, generator=gen, dtype=torch.float64).requires_grad_()
              for _ in range(2))
    old = layers.NORM_CHUNK_ROWS
    layers.NORM_CHUNK_ROWS = chunk
    try:
        torch.autograd.gradcheck(lambda a, b, c: KvProjection.apply(a, b, c, kv_heads, head_dim, EPS, None), (x, wk, wv))
    finally:
        layers.NORM_CHUNK_ROWS = old


@pytest.mark.parametrize("mask_style", ["none", "all_previous", "latest"])
def test_stack_matches_float64_reference_both_modes(mask_style):
    model, text, visual, q_ranges, loss_weights = make_problem(2, 2, 5, 11, mask_style)
    want_loss, want_grads, want_dx, want_out = reference_grads(model, text, visual, q_ranges, loss_weights)
    for recompute in (True, False):
        loss, grads, dx, out = run_stack(model, text, visual, q_ranges, loss_weights, recompute)
        assert_close(out, want_out, f"output recompute={recompute}")
        assert_close(loss, want_loss, "loss")
        assert_close(dx, want_dx, f"dX recompute={recompute}")
        assert set(grads) == set(want_grads)
        for name, g in grads.items():
            assert_close(g, want_grads[name], f"{name} recompute={recompute}")
            assert g.abs().sum() > 0, name


def test_recompute_and_plain_autograd_agree_exactly_enough():
    model, text, visual, q_ranges, loss_weights = make_problem(3, 2, 6, 9, "all_previous", seed=3)
    loss_r, grads_r, dx_r, _ = run_stack(model, text, visual, q_ranges, loss_weights, True)
    loss_p, grads_p, dx_p, _ = run_stack(model, text, visual, q_ranges, loss_weights, False)
    assert_close(loss_r, loss_p, "loss", rtol=1e-6, atol=1e-6)
    assert_close(dx_r, dx_p, "dX", rtol=1e-5, atol=1e-6)
    for name in grads_p:
        assert_close(grads_r[name], grads_p[name], name, rtol=1e-5, atol=1e-6)


def test_recompute_backward_reuses_each_layers_forward_plan(monkeypatch):
    """Each layer plans (checks, allgathers) once, in its forward; its backward runs that plan."""
    import lvxattn.api

    plans = []
    real = lvxattn.api._plan
    monkeypatch.setattr(lvxattn.api, "_plan", lambda *a, **kw: plans.append(1) or real(*a, **kw))
    model, text, visual, q_ranges, loss_weights = make_problem(3, 2, 6, 9, "latest", seed=4)
    model.recompute = True
    out = model(text, visual.clone().requires_grad_(True), q_ranges)
    assert len(plans) == 3
    (out * loss_weights).sum().backward()
    assert len(plans) == 3


def test_a_reused_plan_rejects_tensors_of_another_shape():
    import lvxattn

    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 6, 2, 8)
    o, lse, plan = lvxattn.forward_raw(q, k, k)
    dq, dk, dv = lvxattn.backward_raw(q, k, k, o, lse, torch.ones_like(o), plan=plan)
    want_dq, want_dk, want_dv = lvxattn.backward_raw(q, k, k, o, lse, torch.ones_like(o))
    assert torch.equal(dq, want_dq) and torch.equal(dk, want_dk) and torch.equal(dv, want_dv)
    with pytest.raises(lvxattn.InvalidArgumentError, match="the tensors do not match the plan"):
        lvxattn.backward_raw(q[:, :3], k, k, o[:, :3], lse[..., :3], torch.ones_like(o[:, :3]), plan=plan)


def saved_bytes(model, text, visual, q_ranges, recompute, comm=None):
    model.recompute = recompute
    model.settings = type(model.settings)(comm=comm)
    x = visual.clone().requires_grad_(True)
    with measure_saved(model) as meter:
        out = model(text, x, q_ranges)
    out.sum().backward()   # keep the collective backward in step on every rank
    return meter.bytes


def expected_saving(layers, batch, lkv_local, dtype=torch.float32):
    bytes_per = torch.empty(0, dtype=dtype).element_size()
    return layers * 2 * batch * lkv_local * DIMS["kv_heads"] * DIMS["head_dim"] * bytes_per


def test_recompute_saves_k_and_v_of_every_layer():
    layers, batch = 4, 2
    model, text, visual, q_ranges, _ = make_problem(layers, batch, 6, 64, "latest")
    with_recompute = saved_bytes(model, text, visual, q_ranges, True)
    without = saved_bytes(model, text, visual, q_ranges, False)
    want = expected_saving(layers, batch, 64)
    assert abs((without - with_recompute) - want) <= 0.1 * want, (without, with_recompute, want)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("where", ["_run_forward", "_run_backward"])
def test_a_step_that_raises_under_the_meter_frees_its_activations(monkeypatch, recompute, where):
    """An out-of-memory mid-step must not leave the graph (and the visual features)
    alive: a search for the largest length that fits depends on it."""
    import gc
    import weakref
    import lvxattn.api

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    model, text, visual, q_ranges, _ = make_problem(2, 1, 6, 64, "latest")
    model.recompute = recompute
    visual = visual.clone().requires_grad_()
    alive = weakref.ref(visual)
    monkeypatch.setattr(lvxattn.api, where, out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        with measure_saved(model):
            out = model(text, visual, q_ranges)
        out.sum().backward()
    del visual
    out = None
    gc.collect()
    assert alive() is None


# ---------------------------------------------------------------------------
# Several ranks: communicators of 1, 2 and 3 ranks cut from COMM_WORLD


def sub_communicators(max_size=3):
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    for size in range(1, min(max_size, world.size) + 1):
        comm = world.Split(0 if world.rank < size else MPI.UNDEFINED, world.rank)
        yield size, (None if comm == MPI.COMM_NULL else comm)
        if comm != MPI.COMM_NULL:
            comm.Free()


def shard(tensor, counts, rank):
    offset = sum(counts[:rank])
    return tensor[:, offset:offset + counts[rank]].contiguous()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mask_style", ["none", "all_previous"])
def test_mpi_recompute_matches_plain_and_reference(mask_style):
    batch, lq, lkv = 2, 5, 11
    for size, comm in sub_communicators():
        if comm is None:
            continue
        model, text, visual, q_ranges, loss_weights = make_problem(2, batch, lq, lkv, mask_style, seed=size)
        q_counts, kv_counts = sharding.even_counts(lq, size), sharding.even_counts(lkv, size)
        r = comm.rank
        local = (shard(text, q_counts, r), shard(visual, kv_counts, r),
                 None if q_ranges is None else shard(q_ranges, q_counts, r), shard(loss_weights, q_counts, r))
        want_loss, want_grads, want_dx, want_out = reference_grads(model, text, visual, q_ranges, loss_weights)
        results = {}
        for recompute in (True, False):
            loss, grads, dx, out = run_stack(model, *local, recompute, comm=comm)
            what = f"P={size} rank={r} recompute={recompute}"
            assert_close(out, shard(want_out, q_counts, r), f"output {what}")
            assert_close(loss, want_loss, f"loss {what}")
            assert_close(dx, shard(want_dx, kv_counts, r), f"dX {what}")
            for name, g in grads.items():
                assert_close(g, want_grads[name], f"{name} {what}")
            results[recompute] = (loss, grads, dx)
        (loss_r, grads_r, dx_r), (loss_p, grads_p, dx_p) = results[True], results[False]
        assert_close(loss_r, loss_p, "loss", rtol=1e-6, atol=1e-6)
        assert_close(dx_r, dx_p, "dX", rtol=1e-5, atol=1e-6)
        for name in grads_p:
            assert_close(grads_r[name], grads_p[name], name, rtol=1e-5, atol=1e-6)


@pytest.mark.mpi(min_size=2)
def test_mpi_uneven_shards_with_an_empty_text_rank():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    size, r = comm.size, comm.rank
    lq, lkv = 2 * size - 1, 3 * size + 1
    q_counts = [2] * (size - 1) + [0]
    q_counts[0] += 1
    kv_counts = sharding.even_counts(lkv, size)
    model, text, visual, q_ranges, loss_weights = make_problem(2, 1, lq, lkv, "latest", seed=7)
    want_loss, want_grads, want_dx, _ = reference_grads(model, text, visual, q_ranges, loss_weights)
    local = (shard(text, q_counts, r), shard(visual, kv_counts, r), shard(q_ranges, q_counts, r),
             shard(loss_weights, q_counts, r))
    for recompute in (True, False):
        loss, grads, dx, _ = run_stack(model, *local, recompute, comm=comm)
        assert_close(loss, want_loss, f"loss recompute={recompute}")
        assert_close(dx, shard(want_dx, kv_counts, r), f"dX rank={r} recompute={recompute}")
        for name, g in grads.items():
            assert_close(g, want_grads[name], f"{name} recompute={recompute}")


@pytest.mark.mpi(min_size=2)
def test_mpi_recompute_memory_saving_per_rank():
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    layers, batch, lkv = 3, 2, 32 * comm.size + 1
    model, text, visual, q_ranges, _ = make_problem(layers, batch, 4 * comm.size, lkv, "all_previous")
    q_counts, kv_counts = sharding.even_counts(text.shape[1], comm.size), sharding.even_counts(lkv, comm.size)
    local = (shard(text, q_counts, comm.rank), shard(visual, kv_counts, comm.rank),
             shard(q_ranges, q_counts, comm.rank))
    with_recompute = saved_bytes(model, *local, True, comm=comm)
    without = saved_bytes(model, *local, False, comm=comm)
    want = expected_saving(layers, batch, kv_counts[comm.rank])
    assert abs((without - with_recompute) - want) <= 0.1 * want, (comm.rank, without, with_recompute, want)
