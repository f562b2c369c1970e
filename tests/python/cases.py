"""Test inputs and tolerances shared by the Python tests (the reference itself is
``lvxattn.reference``)."""

from __future__ import annotations

import torch

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
