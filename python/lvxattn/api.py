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
from .first_order import first_order_only

# The library's names (core/types.cpp): the dtypes are torch's, the algorithms lvx, ring,
# ulysses and auto.
ALGORITHMS = tuple(_core.Algorithm.__members__)
_DTYPES = {getattr(torch, name): dtype for name, dtype in _core.DType.__members__.items()}

_planners: dict = {}
_contexts: dict = {}
_last_context: Optional[_core.Context] = None


def _planner_for(comm) -> _core.Planner:
    """The planner of a communicator (one per communicator, made collectively on its first
    call; None: one process). Every call's plan is one allgather on it, made before any
    transport exists, so that ranks that disagree or send bad input all fail at the same
    point instead of hanging."""
    key = None if comm is None else (int(comm.py2f()), comm.Get_size())
    planner = _planners.get(key)
    if planner is None:
        planner = _core.Planner() if comm is None else _core.Planner(comm_f=int(comm.py2f()))
        _planners[key] = planner
    return planner


TRANSPORTS = ("auto", "mpi", "nccl", "mpi-staged", "mpi-direct")


def context_for(comm=None, device: torch.device | str = "cpu", transport: str = "auto") -> _core.Context:
    """The cached context of a communicator, device and transport (one of ``TRANSPORTS``).
    Making one is local; calls on it are collective over ``comm`` (the first one on a
    communicator makes its planner, collectively). Raises InvalidArgumentError for another
    transport name."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    planner = _planner_for(comm)
    key = (None if comm is None else (int(comm.py2f()), comm.Get_size()), device.type, device.index, transport)
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = _core.Context(planner, device=_core.Device(device.type),
                            device_index=-1 if device.index is None else device.index,
                            threads=torch.get_num_threads(), transport=_core.Transport(transport))
        _contexts[key] = ctx
    return ctx


def set_cost_params(flops_per_s: float, bytes_per_s: float, latency_s: float, comm=None,
                    device: torch.device | str = "cpu", transport: str = "auto", kernel=None,
                    links=None) -> None:
    """The rates ``algorithm="auto"`` (and ``transport="auto"``) predict with, for the calls on
    ``context_for(comm, device, transport)`` (rank 0's values decide for all ranks). Rates
    in bytes/s, flops/s and seconds. ``kernel``: the calibrated step costs (8 numbers, see
    ``lvxattn.calibrate``); without them a step costs its flops at ``flops_per_s``.
    ``links``: ``{"nccl" | "mpi-direct" | "mpi-staged": (bytes_per_s, latency_s)}``, each
    device transport's own link; where every transport a call may use has one, the
    fastest predicted runs (else NCCL, then mpi-direct, then mpi-staged). Raises
    InvalidArgumentError for rates <= 0, a kernel of another length or another link name."""
    cost = _core.CostParams(float(flops_per_s), float(bytes_per_s), float(latency_s), [float(x) for x in (kernel or [])],
                            {str(k): (float(v[0]), float(v[1])) for k, v in (links or {}).items()})
    context_for(comm, device, transport).set_cost_params(cost)


def available_transports() -> tuple:
    """Transports this build can use: "mpi" always; with the CUDA backend "mpi-staged" and
    "mpi-direct" (which also needs an MPI that takes CUDA buffers on every rank at run
    time: ``mpi_device_support``); "nccl" when built with NCCL."""
    names = ("mpi",)
    if _core.cuda_built():
        names += ("mpi-staged", "mpi-direct")
    if _core.nccl_built():
        names += ("nccl",)
    return names


def mpi_device_support(comm=None) -> dict:
    """Whether this rank's MPI takes CUDA buffers (MPI must be initialized): ``access``
    ``"none"``, ``"evidence"`` (the MPI says so: MPIX_Query_cuda_support, Open MPI's pml
    ucx over a UCX with CUDA memory, Cray's MPICH_GPU_SUPPORT_ENABLED=1, MVAPICH2's
    MV2_USE_CUDA=1; a collective probe confirms it before first use) or ``"yes"``
    (``LVX_MPI_CUDA_AWARE=1``, trusted); ``how``: what was found, in words; and ``probe``:
    the probe's outcome on ``comm`` (``""`` not run yet, ``"passed"``, ``"failed: ..."``).
    Local. Raises InvalidArgumentError for a bad ``LVX_MPI_CUDA_AWARE``."""
    out = dict(_core.mpi_device_support())
    key = None if comm is None else (int(comm.py2f()), comm.Get_size())
    planner = _planners.get(key)
    out["probe"] = planner.mpi_probe if planner is not None else ""
    return out


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
    """What the last call on this process did: algorithm, transport (as it names itself),
    path (the planner's transport that ran: none, mpi, mpi-staged, mpi-direct or nccl), lvx_form, and per phase
    (``forward``, ``backward``) bytes sent/received, compute, blocked and total seconds.
    Waits for that call's device work."""
    if _last_context is None:
        return {}
    return _last_context.stats()


@dataclass
class _Call:
    """A planned call: its context, plan and device, and its q_ranges as the kernels take
    them. forward_raw returns it as the plan that backward_raw reuses."""
    ctx: Any
    plan: Any
    device: torch.device
    q_ranges: Optional[torch.Tensor]


def _tensor_checks(q, k, v, q_ranges):
    """What only Python can check (the library checks the problem itself: heads, head dim,
    q_ranges values, ...): tensor types, dtypes, devices and matching shapes. Raises
    TypeError/ValueError naming the argument; returns (q, k, v, q_ranges) as the kernels
    take them (q_ranges int32 on q's device)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, L, H, D], got shape {tuple(t.shape)}")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} must be on a CPU or CUDA device, got {t.device}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"q and k must have the same head dim, got {q.shape[3]} and {k.shape[3]}")
    if q_ranges is not None:
        if not isinstance(q_ranges, torch.Tensor):
            raise TypeError(f"q_ranges must be a torch.Tensor, got {type(q_ranges).__name__}")
        if q_ranges.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"q_ranges must be int32 (or int64), got {q_ranges.dtype}")
        want = (q.shape[0], q.shape[1], 2)
        if tuple(q_ranges.shape) != want:
            raise ValueError(f"q_ranges must have shape [B, Lq, 2] = {want}, got {tuple(q_ranges.shape)}")
        if q_ranges.dtype == torch.int64:  # out-of-int32 values stay out of range (the library rejects them)
            q_ranges = q_ranges.clamp(-2**31, 2**31 - 1)
        q_ranges = q_ranges.to(device=q.device, dtype=torch.int32).contiguous()
    return _dense(q), _dense(k), _dense(v), q_ranges


def _problem(q, k, algorithm, scale, q_ranges) -> _core.Problem:
    """This rank's call for the library. Raises ValueError/TypeError for an unknown
    algorithm name or a scale that is not a number (NaN is the library's "default")."""
    if not isinstance(algorithm, _core.Algorithm):
        algorithm = _core.Algorithm(str(algorithm))
    if scale is None:
        scale = math.nan
    else:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise TypeError(f"scale must be a number, got {type(scale).__name__}") from None
        if math.isnan(scale):
            raise ValueError("scale must be finite, got nan")
    B, Lq, Hq, D = q.shape
    return _core.Problem(B=B, Lq=Lq, Lkv=k.shape[1], Hq=Hq, Hkv=k.shape[2], D=D, dtype=_DTYPES[q.dtype],
                         algorithm=algorithm, scale=scale, q_ranges=_ptr(q_ranges))


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned (the kernels copy rows in 16-byte pieces): a view
    that starts mid-row of its storage is copied."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


def _plan(q, k, v, comm, algorithm, q_ranges, scale, transport):
    """Python's checks, then the library's (the front door: one allgather over comm). Bad
    input on any rank fails every rank: the rank at fault raises its own error, the others
    an InvalidArgumentError naming that rank."""
    planner = _planner_for(comm)
    try:
        q, k, v, q_ranges = _tensor_checks(q, k, v, q_ranges)
        problem = _problem(q, k, algorithm, scale, q_ranges)
        ctx = context_for(comm, q.device, transport)
        _use_stream(ctx, q.device)  # the library reads device q_ranges on torch's stream
    except (TypeError, ValueError, _core.LvxError) as exc:
        if comm is None:
            raise
        try:  # join the plan's allgather, so that the other ranks fail too instead of waiting
            planner.fail(str(exc) or type(exc).__name__)
        except _core.InvalidArgumentError:
            pass
        raise
    call = _Call(ctx, ctx.plan(problem), q.device, q_ranges)
    return call, q, k, v, q_ranges


def _use_stream(ctx, device: torch.device):
    if device.type == "cuda":
        # torch's default stream has handle 0, which CUDA reads as the legacy default
        # stream only when spelled cudaStreamLegacy (1).
        ctx.set_stream(torch.cuda.current_stream(device).cuda_stream or 1)


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _run_forward(call: _Call, q, k, v, q_ranges):
    global _last_context
    B, Lq, Hq, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, Hq, Lq), dtype=torch.float32, device=q.device)
    _use_stream(call.ctx, call.device)
    call.ctx.forward(call.plan, _ptr(q), _ptr(k), _ptr(v), _ptr(q_ranges), _ptr(o), _ptr(lse))
    _last_context = call.ctx
    return o, lse


def _run_backward(call: _Call, q, k, v, q_ranges, o, lse, dout, shape=None):
    global _last_context
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _use_stream(call.ctx, call.device)
    call.ctx.backward(call.plan, _ptr(q), _ptr(k), _ptr(v), _ptr(q_ranges), _ptr(o), _ptr(lse),
                      _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv), shape)
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
    @first_order_only("lvxattn.cross_attention")
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
        transport (CUDA tensors): ``"auto"`` (NCCL, mpi-direct or mpi-staged: the fastest by
            calibrated link costs where set, else the first every rank can run), ``"mpi"``
            (the best MPI path: mpi-direct where every rank's MPI takes CUDA buffers, else
            mpi-staged), ``"nccl"``, ``"mpi-staged"`` (through pinned host memory) or
            ``"mpi-direct"`` (CUDA buffers handed to a CUDA-aware MPI). Host tensors always
            go over MPI. ``available_transports()`` lists what this build has.

    Returns:
        This rank's O shard ``[B, Lq_local, Hq, D]`` (dtype of q); ``.backward()`` gives
        this rank's dq, dk, dv shards.

    Raises:
        TypeError, ValueError: bad input on this rank, naming the argument.
        InvalidArgumentError, RankMismatchError: bad input on another rank, or ranks that
            disagree on batch, heads, head dim, dtype, scale, algorithm, mask presence, device,
            or (for ``"auto"``, ``"mpi"`` and ``"mpi-direct"``, NCCL or not) whether their MPI
            takes CUDA buffers.
        UnsupportedError: a transport that cannot run (on every rank alike).
    """
    o, _ = cross_attention_forward(q, k, v, comm, algorithm, q_ranges, scale, transport)
    return o


def forward_raw(q, k, v, comm=None, algorithm="lvx", q_ranges=None, scale=None, transport="auto"):
    """The attention forward without autograd, for callers with their own (explicit
    recompute): returns ``(o, lse, plan)``, o ``[B, Lq_local, Hq, D]`` in q's dtype, lse
    ``[B, Hq, Lq_local]`` float32, and ``plan`` for ``backward_raw`` of the same tensors.
    Collective over ``comm``; raises as ``cross_attention``."""
    call, q, k, v, q_ranges = _plan(q, k, v, comm, algorithm, q_ranges, scale, transport)
    o, lse = _run_forward(call, q, k, v, q_ranges)
    return o, lse, call


def backward_raw(q, k, v, o, lse, dout, comm=None, algorithm="lvx", q_ranges=None, scale=None,
                 transport="auto", plan=None):
    """The attention backward on saved tensors, for callers with their own autograd
    (explicit recompute): returns ``(dq, dk, dv)`` shaped like q, k, v. Collective over
    ``comm``. With ``plan`` (from ``forward_raw`` of the same q, k, v and q_ranges, on
    every rank) the call is neither checked nor planned again; a tensor that does not
    match the plan then fails the call (by default ending the job, as a failure inside a
    schedule does: LVX_ON_ERROR). Without it: checked and planned as ``cross_attention``."""
    if plan is None:
        call, q, k, v, q_ranges = _plan(q, k, v, comm, algorithm, q_ranges, scale, transport)
        shape = None
    else:
        call, q, k, v, q_ranges = plan, _dense(q), _dense(k), _dense(v), plan.q_ranges
        dtype = _DTYPES.get(q.dtype)
        B, Lq, Hq, D = q.shape
        shape = _core.Problem(B=B if dtype is not None else -1, Lq=Lq, Lkv=k.shape[1], Hq=Hq, Hkv=k.shape[2], D=D,
                              dtype=dtype or _core.DType.float32, algorithm=call.plan.algorithm,
                              q_ranges=_ptr(q_ranges))
    return _run_backward(call, q, k, v, q_ranges, _dense(o), lse.contiguous(), _dense(dout.to(q.dtype)), shape)
