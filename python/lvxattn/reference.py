"""The float64 reference: cross-attention written out explicitly (scores, masked
softmax, products) in plain torch, independent of the library's kernels.

Every test checks the library against it, and so can a user: gather a distributed
call's shards and compare them with ``attention`` on the whole problem
(``examples/compare_algorithms.py`` does). It holds the whole score matrix
``[B, Hq, Lq, Lkv]`` in float64, so it is for test-sized problems. Rows that see no
key give O = 0, LSE = -inf and zero gradients (DESIGN.md, Masks).
"""

from __future__ import annotations

import torch


def visible_mask(q_ranges, B, Lq, Lkv, device="cpu"):
    """bool ``[B, Lq, Lkv]``: which global KV rows each query row sees (all without ``q_ranges``)."""
    if q_ranges is None:
        return torch.ones(B, Lq, Lkv, dtype=torch.bool, device=device)
    j = torch.arange(Lkv, device=device)
    begin = q_ranges[..., 0:1].long()
    end = q_ranges[..., 1:2].long()
    return (j >= begin) & (j < end)  # [B, Lq, Lkv]


def attention(q, k, v, q_ranges=None, scale=None):
    """``softmax(scale·Q Kᵀ) V`` in float64: q ``[B, Lq, Hq, D]``, k/v ``[B, Lkv, Hkv, D]``
    (any float dtype, global lengths), q_ranges int ``[B, Lq, 2]`` or None, scale default
    ``D**-0.5``. Returns ``(o [B, Lq, Hq, D], lse [B, Hq, Lq])`` in float64, differentiable
    through q, k, v (call ``.backward`` for the reference gradients)."""
    q, k, v = q.double(), k.double(), v.double()
    B, Lq, Hq, D = q.shape
    Lkv, Hkv = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    g = Hq // Hkv
    kr = k.repeat_interleave(g, dim=2)  # the reference may copy; the library never does
    vr = v.repeat_interleave(g, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, kr) * scale
    mask = visible_mask(q_ranges, B, Lq, Lkv, q.device)[:, None]  # [B, 1, Lq, Lkv]
    s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    p = torch.exp(s - m) * mask
    total = p.sum(dim=-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    o = torch.einsum("bhij,bjhd->bihd", p / safe, vr)
    lse = torch.where(total > 0, torch.log(safe) + m, torch.full_like(m, float("-inf"))).squeeze(-1)
    return o, lse


def rel_err(a, b):
    """‖a − b‖ / ‖b‖ over finite entries; -inf must match -inf exactly."""
    a, b = a.detach().double(), b.detach().double()
    inf = torch.isinf(b)
    if not torch.equal(torch.isinf(a), inf) or torch.isnan(a).any():
        return float("inf")
    a, b = a[~inf], b[~inf]
    den = b.norm()
    num = (a - b).norm()
    return float(num / den) if den > 0 else float(num)
