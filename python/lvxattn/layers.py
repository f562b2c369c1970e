"""Cross-attention layers over sharded visual features, with explicit K/V recompute.

One layer (as in Llama 3.2 Vision's cross-attention layers; the MLP is left out)::

    a   = rms_norm(h) * w_in                          text hidden h: [B, Lq_local, Dt]
    Q   = rms_norm_D(a Wq) * w_qn                     [B, Lq_local, Hq, D]
    K   = rms_norm_D(X Wk) * w_kn,  V = X Wv          visual X: [B, Lkv_local, Dv] -> [B, Lkv_local, Hkv, D]
    out = h + tanh(gate) * (cross_attention(Q, K, V) Wo)

The k-norm weight acts on the D axis of K, so ``Q (K * w_kn)^T = (Q * w_kn) K^T``:
it is applied to Q instead, which leaves K a parameter-free function of X. Then
the only per-layer K/V state autograd would keep is K and V themselves, and the
recompute path saves exactly that much less (DESIGN.md, Explicit recompute).

``CrossAttentionStack(recompute=True)`` runs each layer's K/V projection and the
distributed attention inside ``RecomputedKvAttention``: it saves X (one storage,
shared by all layers), Q, O and LSE, frees K and V, and rebuilds them from X in
backward. ``recompute=False`` runs the same projection as an autograd Function
(``KvProjection``) that keeps K and V per layer. Both share one memory-lean backward
(``kv_backward``), so measured peaks differ only by what recompute drops.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

import lvxattn
from lvxattn.first_order import first_order_only


def _widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32 (fp16/bf16 are widened, fp64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis, computed in (at least) fp32 and returned in ``x``'s dtype."""
    x32 = _widened(x)
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


# Rows of D handled at once by the fp32 parts of the K norm, so its working set is
# bounded (a few tens of MiB) whatever the visual length.
NORM_CHUNK_ROWS = 1 << 16


def _unit_rms_norm_(t: torch.Tensor, eps: float) -> torch.Tensor:
    """In place: every row (last axis) of ``t`` becomes ``row * r`` with
    ``r = (mean(row^2) + eps)^-1/2``, computed in (at least) fp32 chunk by chunk.
    Returns ``r`` as ``[..., 1]`` in the widened dtype."""
    flat = t.view(-1, t.shape[-1])
    rstd = torch.empty(flat.shape[0], 1, dtype=torch.promote_types(t.dtype, torch.float32), device=t.device)
    for start in range(0, flat.shape[0], NORM_CHUNK_ROWS):
        rows = flat[start:start + NORM_CHUNK_ROWS]
        wide = _widened(rows)
        r = torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)
        rstd[start:start + NORM_CHUNK_ROWS] = r
        rows.copy_(wide * r)
    return rstd.view(*t.shape[:-1], 1)


def _unit_rms_norm_backward(y: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor,
                            out: torch.Tensor) -> torch.Tensor:
    """``dx = r * (dy - y * mean(dy * y))`` for ``y = x * r``, chunked, into ``out``
    (which may be ``dy`` itself)."""
    d = y.shape[-1]
    yf, dyf, rf, of = y.reshape(-1, d), dy.reshape(-1, d), rstd.reshape(-1, 1), out.view(-1, d)
    for start in range(0, yf.shape[0], NORM_CHUNK_ROWS):
        sl = slice(start, start + NORM_CHUNK_ROWS)
        y32, dy32 = _widened(yf[sl]), _widened(dyf[sl])
        of[sl] = rf[sl] * (dy32 - y32 * (dy32 * y32).mean(-1, keepdim=True))
    return out


@dataclass(frozen=True)
class AttentionSettings:
    """How the distributed attention runs: communicator, algorithm, softmax scale."""

    comm: Any = None
    algorithm: str = "lvx"
    scale: float | None = None


def kv_forward(x: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, kv_heads: int, head_dim: int,
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K = rms_norm_D(X Wk) (weightless, see module doc) and V = X Wv, both
    ``[B, L, Hkv, D]``, plus the norm's ``rstd`` ``[B, L, Hkv, 1]`` (fp32). No autograd."""
    batch, length, _ = x.shape
    with torch.no_grad():
        k = nn.functional.linear(x, wk).view(batch, length, kv_heads, head_dim)
        rstd = _unit_rms_norm_(k, eps)
        v = nn.functional.linear(x, wv).view(batch, length, kv_heads, head_dim)
    return k, v, rstd


class VisualGrad:
    """The gradient of the visual features X, summed in place over the layers.

    Left to autograd, every layer's dX is a new tensor that the engine then adds to
    its running sum: two X-sized buffers at once, on top of X. Here each layer adds
    its ``dK Wk + dV Wv`` straight into one buffer (``addmm_``), and ``SharedVisual``
    hands the sum to autograd once all layers are done."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None

    def add(self, dk2: torch.Tensor, wk: torch.Tensor, dv2: torch.Tensor, wv: torch.Tensor) -> None:
        if self.sum is None:
            self.sum = torch.mm(dk2, wk)
        else:
            self.sum.addmm_(dk2, wk)
        self.sum.addmm_(dv2, wv)

    def take(self, shape) -> torch.Tensor | None:
        total, self.sum = self.sum, None
        return None if total is None else total.view(shape)


class SharedVisual(torch.autograd.Function):
    """Identity on X whose backward returns what the layers added to ``VisualGrad``
    (plus any gradient that reached X's alias through autograd)."""

    @staticmethod
    def forward(ctx, x, grad: VisualGrad):
        ctx.grad, ctx.shape = grad, x.shape
        ctx.set_materialize_grads(False)
        return x.view_as(x)

    @staticmethod
    @first_order_only("lvxattn.layers.SharedVisual")
    def backward(ctx, dx):
        total = ctx.grad.take(ctx.shape)
        if dx is not None:
            total = dx if total is None else total.add_(dx)
        return total, None


def kv_backward(x: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, k: torch.Tensor, rstd: torch.Tensor,
                dk: torch.Tensor, dv: torch.Tensor, needs: tuple[bool, bool, bool],
                dk_is_scratch: bool = False, visual_grad: VisualGrad | None = None) -> tuple[torch.Tensor | None, ...]:
    """(dX, dWk, dWv) of ``kv_forward`` from dK, dV, each None where ``needs`` says so.

    Written for memory: the norm's backward runs in fp32 chunks (over dK itself when
    ``dk_is_scratch``); dX is one product plus one in-place product-add, added into
    ``visual_grad`` when given (dX is then returned as None)."""
    need_x, need_wk, need_wv = needs
    batch, length, dim = x.shape
    dk_pre = _unit_rms_norm_backward(k, rstd, dk, dk if dk_is_scratch else torch.empty_like(dk))
    width = wk.shape[0]  # Hkv * D, spelled out: a rank may hold no visual rows (length 0)
    dk2 = dk_pre.reshape(batch * length, width)
    dv2 = dv.reshape(batch * length, width)
    x2 = x.reshape(batch * length, dim)
    dx = None
    if need_x and visual_grad is not None:
        visual_grad.add(dk2, wk, dv2, wv)
    elif need_x:
        # Not a view: autograd adds into a non-view gradient in place, into a view by copy.
        dx = torch.matmul(dk_pre.view(batch, length, width), wk)
        dx.view(batch * length, dim).addmm_(dv2, wv)
    dwk = torch.mm(dk2.t(), x2) if need_wk else None
    dwv = torch.mm(dv2.t(), x2) if need_wv else None
    return dx, dwk, dwv


class KvProjection(torch.autograd.Function):
    """``kv_forward`` under autograd, keeping K (and V, through the attention) for
    backward: the path without recompute. It shares ``kv_backward`` with the
    recompute path, so the two differ only in what they keep."""

    @staticmethod
    def forward(ctx, x, wk, wv, kv_heads: int, head_dim: int, eps: float, visual_grad: VisualGrad | None):
        k, v, rstd = kv_forward(x, wk, wv, kv_heads, head_dim, eps)
        ctx.save_for_backward(x, wk, wv, k, rstd)
        ctx.visual_grad = visual_grad
        return k, v

    @staticmethod
    @first_order_only("lvxattn.layers.KvProjection")
    def backward(ctx, dk, dv):
        x, wk, wv, k, rstd = ctx.saved_tensors
        dk = torch.zeros_like(k) if dk is None else dk.to(k.dtype)
        dv = torch.zeros_like(k) if dv is None else dv.to(k.dtype)
        dx, dwk, dwv = kv_backward(x, wk, wv, k, rstd, dk, dv, tuple(ctx.needs_input_grad[:3]),
                                   visual_grad=ctx.visual_grad)
        return dx, dwk, dwv, None, None, None, None


class RecomputedKvAttention(torch.autograd.Function):
    """``cross_attention(Q, K(X), V(X))`` that keeps X instead of K and V for backward.

    Forward saves Q, X, O, LSE (and the weight handles) and the call's plan; backward
    rebuilds K, V from X (``kv_forward``), runs the attention backward on the saved O and
    LSE with the forward's plan (``lvxattn.backward_raw``), and turns dK, dV into dX, dWk,
    dWv (``kv_backward``).
    X's gradients from all layers are summed by autograd.
    """

    @staticmethod
    def forward(ctx, q, x, wk, wv, q_ranges, kv_heads: int, head_dim: int, eps: float,
                settings: AttentionSettings, visual_grad: VisualGrad | None):
        k, v, _ = kv_forward(x, wk, wv, kv_heads, head_dim, eps)
        o, lse, plan = lvxattn.forward_raw(q, k, v, comm=settings.comm, algorithm=settings.algorithm,
                                           q_ranges=q_ranges, scale=settings.scale)
        del k, v  # the point of this Function: K and V die here
        ctx.save_for_backward(q, x, wk, wv, q_ranges, o, lse)
        ctx.plan = plan  # the backward reuses it: no second check, plan or allgather
        ctx.kv_shape = (kv_heads, head_dim, eps)
        ctx.settings, ctx.visual_grad = settings, visual_grad
        return o

    @staticmethod
    @first_order_only("lvxattn.layers.RecomputedKvAttention")
    def backward(ctx, do):
        q, x, wk, wv, q_ranges, o, lse = ctx.saved_tensors
        s = ctx.settings
        k, v, rstd = kv_forward(x, wk, wv, *ctx.kv_shape)
        # Collective: every rank runs it, even one that needs no gradient itself.
        dq, dk, dv = lvxattn.backward_raw(q, k, v, o, lse, do, comm=s.comm, plan=ctx.plan)
        del v
        dx, dwk, dwv = kv_backward(x, wk, wv, k, rstd, dk.to(k.dtype), dv.to(k.dtype),
                                   tuple(ctx.needs_input_grad[1:4]), dk_is_scratch=True,
                                   visual_grad=ctx.visual_grad)
        return (dq if ctx.needs_input_grad[0] else None), dx, dwk, dwv, None, None, None, None, None, None


class CrossAttention(nn.Module):
    """One gated cross-attention layer (text queries, visual keys/values), GQA native."""

    def __init__(self, text_dim: int, visual_dim: int, heads: int, kv_heads: int, head_dim: int,
                 eps: float = 1e-5, gate_init: float = 0.0, device=None, dtype=None):
        super().__init__()
        if heads % kv_heads != 0:
            raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
        self.heads, self.kv_heads, self.head_dim, self.eps = heads, kv_heads, head_dim, eps
        factory = dict(device=device, dtype=dtype)
        self.input_norm = nn.Parameter(torch.ones(text_dim, **factory))
        self.q_proj = nn.Parameter(torch.empty(heads * head_dim, text_dim, **factory))
        self.k_proj = nn.Parameter(torch.empty(kv_heads * head_dim, visual_dim, **factory))
        self.v_proj = nn.Parameter(torch.empty(kv_heads * head_dim, visual_dim, **factory))
        self.o_proj = nn.Parameter(torch.empty(text_dim, heads * head_dim, **factory))
        self.q_norm = nn.Parameter(torch.ones(head_dim, **factory))
        self.k_norm = nn.Parameter(torch.ones(head_dim, **factory))
        self.gate = nn.Parameter(torch.full((1,), float(gate_init), **factory))
        self.reset_projections()

    def reset_projections(self) -> None:
        """Normal(0, 1/fan_in) projections; draws from torch's global generator (seed it per run)."""
        with torch.no_grad():
            for weight in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
                weight.normal_(0.0, 1.0 / math.sqrt(weight.shape[1]))

    def queries(self, h: torch.Tensor) -> torch.Tensor:
        """Q with the k-norm weight folded in: ``[B, Lq_local, Hq, D]``, contiguous."""
        batch, length, _ = h.shape
        a = rms_norm(h, self.input_norm, self.eps)
        q = nn.functional.linear(a, self.q_proj).view(batch, length, self.heads, self.head_dim)
        return (rms_norm(q, self.q_norm, self.eps) * self.k_norm).contiguous()

    def forward(self, h: torch.Tensor, x: torch.Tensor, q_ranges: torch.Tensor | None = None,
                settings: AttentionSettings = AttentionSettings(), recompute: bool = True,
                visual_grad: VisualGrad | None = None) -> torch.Tensor:
        """``visual_grad``: when X is ``SharedVisual``'s output, the sum its dX goes into."""
        q = self.queries(h)
        if recompute:
            o = RecomputedKvAttention.apply(q, x, self.k_proj, self.v_proj, q_ranges, self.kv_heads,
                                            self.head_dim, self.eps, settings, visual_grad)
        else:
            k, v = KvProjection.apply(x, self.k_proj, self.v_proj, self.kv_heads, self.head_dim, self.eps,
                                      visual_grad)
            o = lvxattn.cross_attention(q, k, v, comm=settings.comm, algorithm=settings.algorithm,
                                        q_ranges=q_ranges, scale=settings.scale)
        batch, length = h.shape[:2]
        attended = nn.functional.linear(o.reshape(batch, length, self.heads * self.head_dim), self.o_proj)
        return h + torch.tanh(self.gate) * attended


class CrossAttentionStack(nn.Module):
    """N cross-attention layers that all read the same visual features X.

    ``forward(text, visual, q_ranges)``: text ``[B, Lq_local, Dt]`` and visual
    ``[B, Lkv_local, Dv]`` are this rank's shards; returns the text shard after N
    layers. Collective over ``comm`` in forward and backward.
    """

    def __init__(self, layers: int, text_dim: int, visual_dim: int, heads: int, kv_heads: int,
                 head_dim: int, recompute: bool = True, comm=None, algorithm: str = "lvx",
                 scale: float | None = None, eps: float = 1e-5, gate_init: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.recompute = recompute
        self.settings = AttentionSettings(comm=comm, algorithm=algorithm, scale=scale)
        self.layers = nn.ModuleList(
            CrossAttention(text_dim, visual_dim, heads, kv_heads, head_dim, eps=eps, gate_init=gate_init,
                           device=device, dtype=dtype) for _ in range(layers))

    def forward(self, text: torch.Tensor, visual: torch.Tensor,
                q_ranges: torch.Tensor | None = None) -> torch.Tensor:
        h, visual_grad = text, None
        if visual.requires_grad and torch.is_grad_enabled():
            visual_grad = VisualGrad()
            visual = SharedVisual.apply(visual, visual_grad)
        for layer in self.layers:
            h = layer(h, visual, q_ranges, self.settings, self.recompute, visual_grad)
        return h


# ---------------------------------------------------------------------------
# Measuring what autograd keeps


class SavedTensorMeter:
    """Bytes of distinct storages autograd saves for backward, parameters excluded.

    Use as ``with SavedTensorMeter(exclude=model.parameters()) as meter: loss = f()``;
    then ``meter.bytes``. Several saves of one storage (X saved by every layer) count once.
    """

    def __init__(self, exclude=()):
        self._excluded = {p.untyped_storage().data_ptr() for p in exclude}
        self._seen: dict[int, int] = {}
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self._excluded:
            self._seen[key] = storage.nbytes()
        # A detached alias: the node then holds no Python object whose grad_fn is the
        # node itself. Returning ``t`` makes such a cycle for every saved output, which
        # Python's collector cannot see, so a forward that raises (out of memory)
        # leaked its whole graph and the activations with it.
        return t.detach()

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


@contextmanager
def measure_saved(module: nn.Module) -> Iterator[SavedTensorMeter]:
    """Shorthand for ``SavedTensorMeter(exclude=module.parameters())``."""
    with SavedTensorMeter(exclude=module.parameters()) as meter:
        yield meter
