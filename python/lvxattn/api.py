"""The public attention API: ``cross_attention`` (autograd) and ``cross_attention_forward``.

Layouts (DESIGN.md): q ``[B, Lq_local, Hq, D]``, k/v ``[B, Lkv_local, Hkv, D]``,
lse ``[B, Hq, Lq_local]`` float32, q_ranges int32 ``[B, Lq_local, 2]`` holding each
query row's visible interval ``[begin, end)`` in global KV rows. With ``comm`` (an
mpi4py communicator) each rank passes its contiguous shard of both sequences, in
rank order, of any length (zero included), and gets its shard of O back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from . import _core

ALGORITHMS = ("lvx", "ring", "ulysses", "auto")
TRANSPORTS = ("auto", "mpi", "nccl")
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MAX_HEAD_DIM = 256

_contexts: dict = {}
_last_context: Optional[_core.Context] = None


def context_for(comm=None, device: torch.device | str = "cpu", transport: str = "auto") -> _core.Context:
    """The cached context of a communicator and device. Creating one is collective
    over ``comm``: every rank must ask for the same (device type, transport)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    handle = None if comm is None else int(comm.py2f())
    key = (handle, None if comm is None else comm.Get_size(), device.type, device.index, transport)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _core.Context(comm_f=handle, device=device.type,
                            device_index=-1 if device.index is None else device.index,
                            threads=torch.get_num_threads(), transport=transport)
        _contexts[key] = ctx
    return ctx


def set_cost_params(flops_per_s: float, bytes_per_s: float, latency_s: float, comm=None,
                    device: torch.device | str = "cpu", transport: str = "auto", kernel=None) -> None:
    """The rates ``algorithm="auto"`` predicts with, given to the context that makes
    the plans: with a communicator that is its planning context (rank 0's values
    decide for all ranks), without one the device context itself. ``kernel``: the
    calibrated step costs (8 numbers, see ``lvxattn.calibrate``); without them a
    step costs its flops at ``flops_per_s``."""
    ctx = context_for(None, device, transport) if comm is None else _control_for(comm)
    ctx.set_cost_params(float(flops_per_s), float(bytes_per_s), float(latency_s),
                        [float(x) for x in (kernel or [])])


def _control_for(comm) -> _core.Context:
    """A per-communicator CPU context that only makes plans: its allgather runs
    before any device context exists, so ranks that disagree on the device or
    send bad input all fail at the same point instead of hanging."""
    key = ("control", int(comm.py2f()), comm.Get_size())
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _core.Context(comm_f=int(comm.py2f()), device="cpu", threads=1, transport="mpi")
        _contexts[key] = ctx
    return ctx


def available_transports() -> tuple:
    """Transports this build can use: "mpi" always, "nccl" when built with NCCL."""
    return ("mpi", "nccl") if _core.nccl_built() else ("mpi",)


def empty_cache() -> None:
    """Frees the buffers every context keeps between calls (they grow to the largest
    call so far; on a GPU they live outside torch's allocator). Local, not collective."""
    for ctx in _contexts.values():
        ctx.release_buffers()


def reset_stats() -> None:
    """Zeroes the running totals returned by total_stats()."""
    for ctx in _contexts.values():
        ctx.reset_total_stats()


def total_stats() -> dict:
    """Per phase sums over all calls since reset_stats(): bytes sent/received, compute,
    blocked and total seconds, and the number of calls. Waits for the calls' device
    work (calls themselves return once their work is issued)."""
    totals: dict = {}
    for ctx in _contexts.values():
        for phase, values in ctx.total_stats().items():
            acc = totals.setdefault(phase, {"calls": 0})
            for key in ("calls", "bytes_sent", "bytes_recv", "compute_s", "blocked_s", "total_s"):
                acc[key] = acc.get(key, 0) + values[key]
    return totals


def last_stats() -> dict:
    """What the last call on this process did: algorithm, transport, and per phase
    (``forward``, ``backward``) bytes sent/received, compute, blocked and total seconds.
    Waits for that call's device work."""
    if _last_context is None:
        return {}
    return _last_context.stats()


@dataclass
class _Call:
    ctx: Any
    plan: Any
    device: torch.device


def _local_checks(q, k, v, q_ranges, scale, algorithm):
    """Validates one rank's arguments; raises TypeError/ValueError naming the argument.
    Returns (q, k, v, q_ranges, scale, max_range_end) normalized."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPE_CODES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, L, H, D], got shape {tuple(t.shape)}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on a CPU or CUDA device, got {t.device}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Lq, Hq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Lkv, Hkv, Dk = k.shape
    if B < 1:
        raise ValueError(f"batch size must be >= 1, got q with B={B}")
    if Bk != B:
        raise ValueError(f"q and k must have the same batch size, got {B} and {Bk}")
    if Dk != D:
        raise ValueError(f"q and k must have the same head dim, got {D} and {Dk}")
    if Hq < 1 or Hkv < 1 or Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a positive multiple of KV heads ({Hkv})")
    if not 1 <= D <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim must be in [1, {_MAX_HEAD_DIM}], got {D}")
    if q.device.type == "cuda":
        if not _core.cuda_built():
            raise ValueError("q, k and v are CUDA tensors but this build of lvxattn has no CUDA backend")
        if not _core.cuda_head_dim_supported(D):
            raise ValueError(f"head dim {D} is not built for the CUDA backend (supported: 32, 64, 96, 128)")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    else:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"scale must be a number, got {type(scale).__name__}") from None
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
    max_end = 0
    if q_ranges is not None:
        if not isinstance(q_ranges, torch.Tensor):
            raise TypeError(f"q_ranges must be a torch.Tensor, got {type(q_ranges).__name__}")
        if q_ranges.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"q_ranges must be int32 (or int64), got {q_ranges.dtype}")
        if tuple(q_ranges.shape) != (B, Lq, 2):
            raise ValueError(f"q_ranges must have shape [B, Lq, 2] = {(B, Lq, 2)}, got {tuple(q_ranges.shape)}")
        if q_ranges.numel():
            begin, end = q_ranges[..., 0].long(), q_ranges[..., 1].long()
            # One host read for all three checks (a single sync on a GPU).
            lo, reversed_rows, max_end = torch.stack(
                [begin.min(), (end < begin).sum(), end.max()]).tolist()
            if lo < 0:
                raise ValueError(f"q_ranges begin must be >= 0, got {lo}")
            if reversed_rows:
                raise ValueError("q_ranges must have begin <= end in every row")
            if max_end > 2**31 - 1:
                raise ValueError("q_ranges end does not fit in int32")
        q_ranges = q_ranges.to(device=q.device, dtype=torch.int32).contiguous()
    return _dense(q), _dense(k), _dense(v), q_ranges, scale, max_end


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned (the kernels copy rows in 16-byte pieces): a view
    that starts mid-row of its storage is copied."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _plan(q, k, v, comm, algorithm, q_ranges, scale, transport):
    """Local checks, then the collective plan. A bad input on any rank fails every
    rank: the rank at fault raises its own TypeError/ValueError, the others an
    InvalidArgumentError naming that rank."""
    try:
        q, k, v, q_ranges, scale, max_end = _local_checks(q, k, v, q_ranges, scale, algorithm)
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        local_error = None
    except (TypeError, ValueError) as exc:
        if comm is None:
            raise
        local_error = exc
    if local_error is not None:
        # Join the plan's collective so that the other ranks fail too instead of waiting.
        try:
            _control_for(comm).plan(0, 0, 0, 1, 1, 1, 0, "lvx", 1.0, False, 0,
                                    str(local_error) or type(local_error).__name__)
        except _core.InvalidArgumentError:
            pass
        raise local_error
    B, Lq, Hq, D = q.shape
    args = (B, Lq, k.shape[1], Hq, k.shape[2], D, _DTYPE_CODES[q.dtype], algorithm, scale,
            q_ranges is not None, max_end)
    device_code = 1 if q.device.type == "cuda" else 0
    if comm is None:
        ctx = context_for(None, q.device, transport)
        plan = ctx.plan(*args, "", device_code)
    else:
        plan = _control_for(comm).plan(*args, "", device_code)
        ctx = context_for(comm, q.device, transport)
    return _Call(ctx, plan, q.device), q, k, v, q_ranges


def _use_stream(call: _Call):
    if call.device.type == "cuda":
        # torch's default stream has handle 0, which CUDA reads as the legacy default
        # stream only when spelled cudaStreamLegacy (1).
        call.ctx.set_stream(torch.cuda.current_stream(call.device).cuda_stream or 1)


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _run_forward(call: _Call, q, k, v, q_ranges):
    global _last_context
    B, Lq, Hq, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    _use_stream(call)
    call.ctx.forward(call.plan, _ptr(q), _ptr(k), _ptr(v), _ptr(q_ranges), _ptr(o), _ptr(lse))
    _last_context = call.ctx
    return o, lse


def _run_backward(call: _Call, q, k, v, q_ranges, o, lse, dout):
    global _last_context
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _use_stream(call)
    call.ctx.backward(call.plan, _ptr(q), _ptr(k), _ptr(v), _ptr(q_ranges), _ptr(o), _ptr(lse),
                      _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv))
    _last_context = call.ctx
    return dq, dk, dv


class _CrossAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, q_ranges, call):
        o, lse = _run_forward(call, q, k, v, q_ranges)
        ctx.save_for_backward(q, k, v, o, lse, q_ranges)
        ctx.call = call
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for lse
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, q_ranges = ctx.saved_tensors
        if do is None:  # o did not reach the loss
            return None, None, None, None, None
        do = _dense(do.to(q.dtype))
        dq, dk, dv = _run_backward(ctx.call, q, k, v, q_ranges, o, lse, do)
        return dq, dk, dv, None, None


def cross_attention_forward(q, k, v, comm=None, algorithm="lvx", q_ranges=None, scale=None,
                            transport="auto"):
    """Distributed cross-attention returning ``(o, lse)``; differentiable through ``o``."""
    call, q, k, v, q_ranges = _plan(q, k, v, comm, algorithm, q_ranges, scale, transport)
    return _CrossAttentionFunction.apply(q, k, v, q_ranges, call)


def cross_attention(q, k, v, comm=None, algorithm="lvx", q_ranges=None, scale=None, transport="auto"):
    """Exact cross-attention ``softmax(scale·Q Kᵀ) V`` over sequences sharded across ``comm``.

    Sharding: each global sequence (text queries of global length Lq, visual keys and
    values of global length Lkv) is split into contiguous pieces in rank order; this
    rank passes its piece of each, of any length (zero included, pieces may differ).
    "Local" lengths below are this rank's rows; "global" lengths the whole sequence's.

    Args:
        q: ``[B, Lq_local, Hq, D]``, float32, float16 or bfloat16, on the CPU or a CUDA device.
        k, v: ``[B, Lkv_local, Hkv, D]``, same dtype and device; ``Hq % Hkv == 0`` (GQA).
        comm: an mpi4py communicator (the call is collective over it), or None for one process.
        algorithm: ``"lvx"`` (K/V stay, the query side travels; LV-XAttn, Chang &
            Venkataraman, ICML 2025), ``"ring"`` (K/V travel; Ring Attention),
            ``"ulysses"`` (all-to-all over heads; needs Hq and Hkv divisible by the
            ranks) or ``"auto"`` (the cost model picks). All give the same result up to rounding.
        q_ranges: optional mask, int32 (or int64) ``[B, Lq_local, 2]``: row i of this
            rank's queries sees the keys ``[q_ranges[b, i, 0], q_ranges[b, i, 1])`` in
            **global** KV rows (0 <= begin <= end <= Lkv global). A row with begin == end
            sees nothing and gets O = 0 and zero gradients. ``lvxattn.masks`` builds the
            masks multimodal LLMs use. None: every row sees every key.
        scale: softmax scale, default ``1/sqrt(D)``.
        transport: ``"auto"``, ``"mpi"`` or ``"nccl"`` (CUDA tensors; ``available_transports()``).

    Returns:
        This rank's O shard ``[B, Lq_local, Hq, D]`` (dtype of q); ``.backward()`` gives
        this rank's dq, dk, dv shards.

    Raises:
        TypeError, ValueError: bad input on this rank, naming the argument.
        InvalidArgumentError, RankMismatchError: bad input on another rank, or ranks that
            disagree on batch, heads, head dim, dtype, scale, algorithm, mask presence or device.
    """
    o, _ = cross_attention_forward(q, k, v, comm, algorithm, q_ranges, scale, transport)
    return o


def backward_raw(q, k, v, o, lse, dout, comm=None, algorithm="lvx", q_ranges=None, scale=None,
                 transport="auto"):
    """The attention backward on saved tensors, for callers with their own autograd
    (explicit recompute): returns ``(dq, dk, dv)``."""
    call, q, k, v, q_ranges = _plan(q, k, v, comm, algorithm, q_ranges, scale, transport)
    return _run_backward(call, q, k, v, q_ranges, _dense(o), lse.contiguous(), _dense(dout.to(q.dtype)))
