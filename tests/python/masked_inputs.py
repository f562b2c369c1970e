"""Inputs with NaN/±Inf where some query rows cannot see them, and the float64
reference that computes every query row from its visible KV rows only (so a value
outside a row's interval cannot reach that row's results, not even as 0·NaN).

Shared by the CPU tests (test_masked_values.py) and the GPU ones
(test_gpu_masked_values.py).

The KV sequence of ``layout(Lkv)`` is laid out as
``pad | image 1 | image 2 | gap | image 3 | tail``; query row i sees, by i % 6:
0 nothing (empty interval), 1 images 1-2, 2 image 2, 3 image 2 less its last row,
4 image 3, 5 image 3 from its second row. So tiles hold rows
that see different subsets of their KV rows, KV rows no row sees (pad, gap, tail),
and KV rows only some rows see (image 2's last row: rows 1 and 2 only).
"""

from __future__ import annotations

import math

import torch

POISONS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def layout(Lkv):
    """Region bounds of the KV sequence (see the module docstring)."""
    pad, tail = max(1, Lkv // 10), max(1, Lkv // 10)
    gap = max(2, Lkv // 10)
    body = Lkv - pad - tail - gap
    i1 = pad + body // 4
    i2 = i1 + body // 3
    g = i2 + gap
    return {"pad": pad, "i1": i1, "i2": i2, "gap": g, "tail": Lkv - tail, "Lkv": Lkv}


def ranges_for(B, Lq, Lkv):
    """int32 [B, Lq, 2] q_ranges of the layout; batch b shifts the empty rows' position."""
    r = layout(Lkv)
    per_kind = [(r["pad"] + 1, r["pad"] + 1), (r["pad"], r["i2"]), (r["i1"], r["i2"]),
                (r["i1"], r["i2"] - 1), (r["gap"], r["tail"]), (r["gap"] + 1, r["tail"])]
    out = torch.empty(B, Lq, 2, dtype=torch.int32)
    for b in range(B):
        for i in range(Lq):
            out[b, i] = torch.tensor(per_kind[(i + b) % 6])
    return out


def hidden_kv_rows(Lkv):
    """KV rows no query row of the layout sees: the pad, the gap and the tail."""
    r = layout(Lkv)
    return [*range(0, r["pad"]), *range(r["i2"], r["gap"]), *range(r["tail"], Lkv)]


def partial_kv_rows(Lkv):
    """A KV row some rows see and others (sharing its tiles) do not: image 2's last row."""
    return [layout(Lkv)["i2"] - 1]


def make_problem(B, Lq, Lkv, Hq, Hkv, D, dtype, where, poison, seed=0, device="cpu"):
    """q, k, v, dO (dtype) and q_ranges of the layout, with `poison` (nan, inf, -inf) at:

    - "k_hidden" / "v_hidden": every head of the KV rows no row sees;
    - "k_partial" / "v_partial": those and image 2's last row, which rows of kind 1, 2 see;
    - "q_empty": Q and dO of the rows with an empty interval.
    Values are scaled so that no visible probability underflows in fp16.
    """
    gen = torch.Generator().manual_seed(seed)
    q = (0.5 * torch.randn(B, Lq, Hq, D, generator=gen)).to(dtype)
    k = (0.5 * torch.randn(B, Lkv, Hkv, D, generator=gen)).to(dtype)
    v = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype)
    do = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
    ranges = ranges_for(B, Lq, Lkv)
    x = POISONS[poison]
    tensor, _, kind = where.partition("_")
    if tensor in ("k", "v"):
        rows = hidden_kv_rows(Lkv) + (partial_kv_rows(Lkv) if kind == "partial" else [])
        t = k if tensor == "k" else v
        t[:, rows] = x
    elif where == "q_empty":
        empty = ranges[..., 1] <= ranges[..., 0]  # [B, Lq]
        q[empty] = x
        do[empty] = -x if poison != "nan" else x
    else:
        raise ValueError(where)
    return tuple(t.to(device) for t in (q, k, v, do, ranges))


def attention_visible(q, k, v, q_ranges, scale=None):
    """float64 (o [B, Lq, Hq, D], lse [B, Hq, Lq]), each row from its visible KV rows
    only (a row that sees nothing: O = 0, LSE = -inf); differentiable through q, k, v."""
    q, k, v = q.double(), k.double(), v.double()
    B, Lq, Hq, D = q.shape
    g = Hq // k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    ranges = q_ranges.cpu().tolist()
    o_rows, lse_rows = [], []
    for b in range(B):
        for i in range(Lq):
            lo, hi = ranges[b][i]
            if hi <= lo:
                o_rows.append(q.new_zeros(Hq, D))
                lse_rows.append(q.new_full((Hq,), -math.inf))
                continue
            kk = k[b, lo:hi].repeat_interleave(g, dim=1)  # [n, Hq, D]
            vv = v[b, lo:hi].repeat_interleave(g, dim=1)
            s = torch.einsum("hd,nhd->hn", q[b, i], kk) * scale
            o_rows.append(torch.einsum("hn,nhd->hd", torch.softmax(s, dim=-1), vv))
            lse_rows.append(torch.logsumexp(s, dim=-1))
    o = torch.stack(o_rows).view(B, Lq, Hq, D)
    lse = torch.stack(lse_rows).view(B, Lq, Hq).transpose(1, 2)
    return o, lse


def reference_with_grads(q, k, v, do, q_ranges, scale=None, device="cpu"):
    """attention_visible's o, lse and dq, dk, dv for the output gradient do (float64 on
    `device`: torch's own float64 operations, CPU or GPU)."""
    qr, kr, vr = (t.detach().to(device, torch.float64).requires_grad_() for t in (q, k, v))
    o, lse = attention_visible(qr, kr, vr, q_ranges, scale)
    o.backward(do.to(device, torch.float64))
    return {"o": o.detach(), "lse": lse.detach(), "dq": qr.grad, "dk": kr.grad, "dv": vr.grad}


def mismatch(got, want, tol):
    """None when `got` has non-finite values exactly where `want` does (NaN where it
    has NaN) and ‖got − want‖ / ‖want‖ < tol over the finite entries; else a message."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    fin_w, fin_g = torch.isfinite(want), torch.isfinite(got)
    if not torch.equal(fin_w, fin_g):
        return (f"{int((fin_w & ~fin_g).sum())} non-finite where the reference is finite, "
                f"{int((~fin_w & fin_g).sum())} finite where it is not")
    if not torch.equal(torch.isnan(want), torch.isnan(got)):
        return f"NaN at {int(torch.isnan(got).sum())} entries, reference at {int(torch.isnan(want).sum())}"
    a, b = got[fin_w], want[fin_w]
    den = float(b.norm())
    err = float((a - b).norm()) / den if den > 0 else float((a - b).norm())
    return None if err < tol else f"relative error {err:.2e} >= {tol:.0e}"


def check_results(got, ref, ranges, label, tol, lse_tol, hidden=None):
    """Asserts every result of `got` (o, lse, dq, dk, dv) against `ref` by `mismatch`
    (LSE at `lse_tol`), and exact zeros where nothing is seen: O and dQ of rows with an
    empty interval (their LSE −inf), dK and dV of the KV rows no row sees (`hidden`, by
    default those of ``layout``)."""
    bad = {}
    for name in ("o", "lse", "dq", "dk", "dv"):
        msg = mismatch(got[name], ref[name], lse_tol if name == "lse" else tol)
        if msg:
            bad[name] = msg
    empty = (ranges[..., 1] <= ranges[..., 0]).cpu()  # [B, Lq]
    if empty.any():
        if got["o"].cpu()[empty].abs().max() != 0 or got["dq"].cpu()[empty].abs().max() != 0:
            bad["empty rows"] = "O or dQ not exactly zero"
        if not torch.all(got["lse"].cpu().transpose(1, 2)[empty] == -math.inf):
            bad["empty rows lse"] = "not -inf"
    hidden = hidden_kv_rows(ref["dk"].shape[1]) if hidden is None else hidden
    for name in ("dk", "dv"):
        if len(hidden) and got[name].cpu()[:, hidden].abs().max() != 0:
            bad[f"{name} of hidden KV rows"] = "not exactly zero"
    assert not bad, f"{label}: {bad}"


def kv_splits(Lkv, P):
    """KV row counts per rank that cut at and inside the hidden regions of ``layout``."""
    r = layout(Lkv)
    if P == 1:
        return [[Lkv]]
    if P == 2:  # at the pad's edge; inside the gap
        return [[r["pad"], Lkv - r["pad"]], [r["i2"] + 2, Lkv - r["i2"] - 2]]
    # inside the pad and at the gap's start; a rank with no rows, one that owns only the tail
    return [[r["pad"] // 2, r["i2"] - r["pad"] // 2, Lkv - r["i2"]], [0, r["tail"], Lkv - r["tail"]]]


def run_distributed(comm, algorithm, problem, lq, lkv, device="cpu", **kwargs):
    """One forward and backward of the global `problem` (q, k, v, do, ranges) over `comm`,
    this rank holding query rows `lq[rank]` and KV rows `lkv[rank]` (row counts per rank)
    on `device`; `algorithm` is a name or "lvx/<form>". Returns the results gathered in
    global order (o, lse, dq, dk, dv); `kwargs` go to cross_attention_forward."""
    import lvxattn
    from dist_util import gather_rows, lvx_form, shard

    algorithm, _, form = algorithm.partition("/")
    q, k, v, do, ranges = problem
    rank = comm.rank
    ql = shard(q, lq, rank).to(device).requires_grad_()
    kl = shard(k, lkv, rank).to(device).requires_grad_()
    vl = shard(v, lkv, rank).to(device).requires_grad_()
    with lvx_form(form):
        o, lse = lvxattn.cross_attention_forward(ql, kl, vl, comm=comm, algorithm=algorithm,
                                                 q_ranges=shard(ranges, lq, rank).to(device), **kwargs)
        o.backward(shard(do, lq, rank).to(device))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return {"o": gather_rows(comm, o), "lse": gather_rows(comm, lse, dim=2), "dq": gather_rows(comm, ql.grad),
            "dk": gather_rows(comm, kl.grad), "dv": gather_rows(comm, vl.grad)}
