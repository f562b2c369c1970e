"""Float64 reference cross-attention, written out explicitly (scores, masked
softmax, products), used by every test. Rows that see no key give O = 0,
LSE = -inf and zero gradients."""

from __future__ import annotations

import torch


def visible_mask(q_ranges, B, Lq, Lkv, device="cpu"):
    if q_ranges is None:
        return torch.ones(B, Lq, Lkv, dtype=torch.bool, device=device)
    j = torch.arange(Lkv, device=device)
    begin = q_ranges[..., 0:1].long()
    end = q_ranges[..., 1:2].long()
    return (j >= begin) & (j < end)  # [B, Lq, Lkv]


def attention(q, k, v, q_ranges=None, scale=None):
    """q [B, Lq, Hq, D], k/v [B, Lkv, Hkv, D] (any float dtype) -> (o, lse) in float64,
    differentiable through q, k, v."""
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


TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def random_ranges(B, Lq, Lkv, generator=None):
    """Random intervals with some empty and some full rows."""
    a = torch.randint(0, Lkv + 1, (B, Lq), generator=generator)
    b = torch.randint(0, Lkv + 1, (B, Lq), generator=generator)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    rows = torch.arange(B * Lq).view(B, Lq)
    lo = torch.where(rows % 5 == 0, torch.full_like(lo, Lkv // 2), lo)
    hi = torch.where(rows % 5 == 0, torch.full_like(hi, Lkv // 2), hi)  # empty
    lo = torch.where(rows % 7 == 1, torch.zeros_like(lo), lo)
    hi = torch.where(rows % 7 == 1, torch.full_like(hi, Lkv), hi)      # full
    return torch.stack([lo, hi], dim=-1).to(torch.int32)
