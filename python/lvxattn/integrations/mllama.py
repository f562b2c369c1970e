"""Hugging Face Mllama (Llama 3.2 Vision) with its cross-attention layers run by lvxattn.

The visual tokens (``cross_attention_states``, the vision encoder's output after the
projector) are split over the ranks of an mpi4py communicator in contiguous pieces
of any length, zero included (DESIGN.md, Sharding). Every ``MllamaTextCrossAttention``
layer of the model then attends through ``lvxattn.cross_attention``: K and V are
made on the rank that holds the tokens and never move (``algorithm="lvx"``), GQA
without repeating K/V, with the model's own projections and q/k norms::

    Q = q_norm(h Wq) * w_kn           [B, Lq, Hq, D]   (k_norm's weight acts on D: folded into Q)
    K = rms_norm_D(X Wk),  V = X Wv   [B, Lkv_local, Hkv, D]
    out = cross_attention(Q, K, V, q_ranges) Wo

Two ways to hold the text:

* ``text="replicated"``: every rank holds the whole text and runs the whole model.
  In each cross-attention layer every rank makes Q for all rows, keeps its share
  of the rows (``lvxattn.sharding.even_counts``), attends, and the rows are gathered
  back to every rank (an autograd Function: backward keeps this rank's rows of the
  gradient, which is the same on every rank). Gradients come out as the
  unpatched model's on every rank: the K/V projection weights, the only ones fed
  by this rank's visual shard alone, are summed over ranks in backward; the
  visual states' gradient is this rank's shard of the full one. Every rank must
  compute the same loss from the (replicated) outputs.
* ``text="sharded"``: each rank passes its own contiguous piece of the text (for
  codes that split the text themselves; the model's self-attention layers then
  see only local rows, which is right only where the caller made them
  sequence-parallel or the stack has cross-attention layers only). Every
  gradient is this rank's part: sum parameter gradients over ranks as
  data-parallel training does.

Masks. Mllama's ``cross_attention_mask`` ``[B, Lq, images, tiles]`` (1: the row
sees the tile) is turned into ``q_ranges`` in global KV rows: tile ``j =
image * tiles + tile`` covers visual tokens ``[j * T, (j + 1) * T)`` with ``T =
Lkv / (images * tiles)`` (the model's layout of ``cross_attention_states``).
A row's visible tiles must be one run, else ``lvxattn.InvalidArgumentError``
names the row. As in the model (``_prepare_cross_attention_mask``), a value
counts as visible only when it equals 1, and a row that sees no tile attends to
every visual token unmasked while its MLP output is zeroed
(``full_text_row_masked_out_mask``). ``q_ranges`` can be given instead; a row
with ``begin == end`` is then such a row.

Entry points: ``ShardedMllama`` wraps a model (forward as the model's, plus
``q_ranges``); ``patch``/``unpatch`` and ``plan_cross_attention`` serve codes that
call the text model or its layers themselves; ``q_ranges_from_mask`` converts a
mask in one process. Not supported: generation with a KV cache, attention
dropout in training, and any ``attn_implementation`` setting is bypassed in the
patched layers (self-attention layers keep theirs).
"""

from __future__ import annotations

import dataclasses
import zlib
from types import MethodType
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

import lvxattn
from lvxattn.sharding import even_counts
from lvxattn.layers import AttentionSettings, KvProjection, RecomputedKvAttention, SharedVisual, VisualGrad

try:
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.models.mllama import modeling_mllama as hf_mllama
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("lvxattn.integrations.mllama needs transformers: pip install 'lvxattn[hf]'") from exc

TEXT_MODES = ("replicated", "sharded")

__all__ = ["TEXT_MODES", "CrossAttentionPlan", "ShardedMllama", "cross_attention_layer_ids", "patch", "unpatch",
           "plan_cross_attention", "q_ranges_from_mask", "shard_visual"]


def cross_attention_layer_ids(num_layers: int) -> list[int]:
    """Layers 3, 8, 13, ... below ``num_layers``: where Llama-3.2-11B-Vision puts its
    cross-attention layers (transformers' ``MllamaTextConfig`` default, 8 of 40 layers),
    for smaller stacks in the same ratio."""
    return list(range(3, num_layers, 5))


# ---------------------------------------------------------------------------
# Mask -> q_ranges


def _tile_runs(visible_row: torch.Tensor) -> list[tuple[int, int]]:
    """Runs ``[first, end)`` of consecutive visible tiles in one row (a 1-D bool tensor)."""
    runs: list[tuple[int, int]] = []
    for j in visible_row.nonzero().flatten().tolist():
        if runs and runs[-1][1] == j:
            runs[-1] = (runs[-1][0], j + 1)
        else:
            runs.append((j, j + 1))
    return runs


def _tile_intervals(mask: torch.Tensor):
    """``mask [B, L, images, tiles]`` -> (first tile, end tile, sees) ``[B, L]`` each, and
    ``(batch, row, runs)`` of the first row whose visible tiles are not one run (or None)."""
    batch, rows, images, tiles_per_image = mask.shape
    tiles = images * tiles_per_image
    visible = (mask == 1).reshape(batch, rows, tiles)
    index = torch.arange(tiles, device=mask.device)
    count = visible.sum(-1)
    first = torch.where(visible, index, tiles).amin(-1)
    end = torch.where(visible, index + 1, 0).amax(-1)
    sees = count > 0
    bad = (sees & (count != end - first)).nonzero()
    first_bad = None
    if bad.numel():
        b, row = bad[0].tolist()
        first_bad = (b, row, _tile_runs(visible[b, row]))
    return first, end, sees, first_bad


def _describe_bad_row(b: int, row: int, runs, tiles_per_image: int, tokens_per_tile: int | None) -> str:
    def tile(j: int) -> str:
        return f"image {j // tiles_per_image} tile {j % tiles_per_image}"

    parts = []
    for first, end in runs:
        text = tile(first) if end - first == 1 else f"{tile(first)} .. {tile(end - 1)}"
        if tokens_per_tile is not None:
            text += f" = visual tokens [{first * tokens_per_tile}, {end * tokens_per_tile})"
        parts.append(text)
    return (f"cross_attention_mask: text row {row} of batch {b} sees {len(runs)} separate runs of image tiles "
            f"({'; '.join(parts)}); lvxattn needs each row's visible visual tokens to be one interval")


def q_ranges_from_mask(cross_attention_mask: torch.Tensor, visual_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mllama's cross-attention mask as lvxattn ``q_ranges``, in one process.

    cross_attention_mask: ``[B, Lq, images, tiles]`` (any dtype; 1 = visible, as in
    the model); visual_len: the whole visual sequence's length, a multiple of
    ``images * tiles``. Returns ``(q_ranges, sees_image)``: int32 ``[B, Lq, 2]`` global
    KV rows ``[begin, end)`` and bool ``[B, Lq]``. Rows that see no tile get
    ``[0, visual_len)`` and ``sees_image = False`` (the model's behaviour, see the
    module doc). Raises ``lvxattn.InvalidArgumentError`` naming the first row whose
    visible tiles are not one run, or for a bad shape or length.
    """
    if not isinstance(cross_attention_mask, torch.Tensor) or cross_attention_mask.dim() != 4:
        raise lvxattn.InvalidArgumentError("cross_attention_mask must be a 4-D tensor [B, Lq, images, tiles]")
    tiles = cross_attention_mask.shape[2] * cross_attention_mask.shape[3]
    if tiles < 1 or visual_len < 1 or visual_len % tiles:
        raise lvxattn.InvalidArgumentError(
            f"the visual length {visual_len} must be a positive multiple of images * tiles = {tiles}")
    first, end, sees, bad = _tile_intervals(cross_attention_mask)
    per_tile = visual_len // tiles
    if bad is not None:
        raise lvxattn.InvalidArgumentError(_describe_bad_row(*bad, cross_attention_mask.shape[3], per_tile))
    return _token_ranges(first, end, sees, per_tile, visual_len), sees


def _token_ranges(first, end, sees, per_tile, visual_len):
    begin = torch.where(sees, first * per_tile, 0)
    stop = torch.where(sees, end * per_tile, visual_len)
    return torch.stack([begin, stop], dim=-1).to(torch.int32).contiguous()


# ---------------------------------------------------------------------------
# Collective plan


@dataclasses.dataclass(frozen=True, eq=False)
class CrossAttentionPlan:
    """What every patched cross-attention layer of one forward needs; made by
    ``plan_cross_attention`` (collectively) and passed to the text model as its
    ``cross_attention_mask``, which Mllama hands to each cross-attention layer.

    q_counts: text rows each rank attends with (replicated: an even split of the
    text; sharded: each rank's piece). kv_counts: visual tokens each rank holds.
    q_ranges: int32 ``[B, q_counts[rank], 2]`` global KV rows, or None (no mask).
    sees_image: bool ``[B, rows this rank passes in]`` or None.
    """

    comm: Any
    text: str
    algorithm: str
    recompute_kv: bool
    q_counts: tuple
    kv_counts: tuple
    q_ranges: torch.Tensor | None
    sees_image: torch.Tensor | None
    visual_grad: VisualGrad | None = None

    @property
    def rank(self) -> int:
        return 0 if self.comm is None else self.comm.Get_rank()

    @property
    def size(self) -> int:
        return len(self.kv_counts)

    @property
    def q_offset(self) -> int:
        return sum(self.q_counts[:self.rank])

    @property
    def visual_len(self) -> int:
        return sum(self.kv_counts)

    def full_text_row_masked_out_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The model's ``[B, 1, rows, 1]`` factor on the cross-attention layers' MLP
        output: 0 for rows that see no image, 1 otherwise (None without a mask)."""
        if self.sees_image is None:
            return None
        return self.sees_image[:, None, :, None].to(dtype)


def _fingerprint(*tensors) -> int:
    """crc32 of the tensors' bytes (None skipped), to tell replicated inputs that differ."""
    crc = 0
    for t in tensors:
        if t is None:
            continue
        t = t.detach()
        crc = zlib.crc32(repr((tuple(t.shape), str(t.dtype))).encode(), crc)
        host = t.to("cpu").contiguous()
        data = host.view(torch.uint8) if host.dtype == torch.bfloat16 else host
        crc = zlib.crc32(data.numpy().tobytes(), crc)
    return crc


def _local_summary(visual, text_rows, cross_attention_mask, q_ranges, local_check):
    """This rank's half of the plan (raises on bad input): shapes, the mask's tile
    intervals or the given q_ranges, and a fingerprint of the mask."""
    if local_check is not None:
        local_check()
    if not isinstance(visual, torch.Tensor) or visual.dim() != 3:
        got = tuple(visual.shape) if isinstance(visual, torch.Tensor) else type(visual).__name__
        raise ValueError(f"cross_attention_states must be this rank's visual tokens [B, Lkv_local, hidden], got {got}")
    batch = visual.shape[0]
    if batch < 1:
        raise ValueError("cross_attention_states must have a batch of at least 1")
    summary = dict(batch=batch, text_rows=int(text_rows), visual_rows=visual.shape[1], visual_dim=visual.shape[2],
                   dtype=str(visual.dtype), device=visual.device.type, mask=None, tiles=None, max_end=0,
                   bad_row=None, fingerprint=_fingerprint(cross_attention_mask, q_ranges))
    if cross_attention_mask is not None and q_ranges is not None:
        raise ValueError("give cross_attention_mask or q_ranges, not both")
    if cross_attention_mask is not None:
        m = cross_attention_mask
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or tuple(m.shape[:2]) != (batch, text_rows):
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"cross_attention_mask must be [B, Lq, images, tiles] with B = {batch} and "
                             f"Lq = {text_rows} (this rank's text rows), got {got}")
        if m.shape[2] * m.shape[3] < 1:
            raise ValueError("cross_attention_mask must have at least one image tile")
        first, end, sees, bad = _tile_intervals(m)
        summary.update(mask="tiles", tiles=(m.shape[2], m.shape[3]), bad_row=bad)
        return summary, (first, end, sees)
    if q_ranges is not None:
        r = q_ranges
        if not isinstance(r, torch.Tensor) or r.dtype not in (torch.int32, torch.int64) or \
                tuple(r.shape) != (batch, text_rows, 2):
            got = (tuple(r.shape), r.dtype) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"q_ranges must be int32/int64 [B, Lq, 2] = {(batch, text_rows, 2)}, got {got}")
        r = r.long()
        if r.numel():
            if int(r[..., 0].min()) < 0 or bool((r[..., 1] < r[..., 0]).any()):
                raise ValueError("q_ranges must have 0 <= begin <= end in every row")
            summary["max_end"] = int(r[..., 1].max())
        summary["mask"] = "ranges"
        return summary, r
    return summary, None


def _agree(comm, summary_or_error):
    """One allgather of every rank's summary (or its error text)."""
    return [summary_or_error] if comm is None else comm.allgather(summary_or_error)


def _combined(problems, size: int) -> str:
    """One message for ``(rank, text)`` problems: the text alone when every rank of
    several (or the only one) reports the same, else each rank's text after its number."""
    texts = {text for _, text in problems}
    if len(texts) == 1 and (size == 1 or len({r for r, _ in problems}) == size):
        return texts.pop()
    return "; ".join(f"rank {rank}: {text}" for rank, text in problems)


def plan_cross_attention(cross_attention_states: torch.Tensor, text_rows: int, *, comm=None,
                         text: str = "replicated", cross_attention_mask: torch.Tensor | None = None,
                         q_ranges: torch.Tensor | None = None, algorithm: str = "lvx",
                         recompute_kv: bool = False, fingerprint: int | None = None,
                         local_check: Callable[[], None] | None = None) -> CrossAttentionPlan:
    """The plan of one sharded forward; collective over ``comm`` (one allgather).

    cross_attention_states: this rank's visual tokens ``[B, Lkv_local, hidden]``.
    text_rows: the text rows this rank passes in (replicated: all of them).
    cross_attention_mask ``[B, text_rows, images, tiles]`` or q_ranges ``[B, text_rows, 2]``
    (global KV rows) for those rows, or neither (every row sees every token).
    fingerprint: an int that must be equal on all ranks (replicated mode: a hash of
    the text) and ``local_check``: a callable that raises on this rank's bad input;
    both take part in the agreement.

    Every rank raises the same error when any rank's input is bad:
    ``lvxattn.InvalidArgumentError`` (a ValueError) for bad input, naming the ranks,
    and the text row for a mask row that is not one interval;
    ``lvxattn.RankMismatchError`` when ranks disagree (batch, hidden size, dtype,
    device, mask tiles; in replicated mode also text length and content).
    """
    local = None
    try:
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, got {text!r}")
        if algorithm not in lvxattn.ALGORITHMS:
            raise ValueError(f"algorithm must be one of {lvxattn.ALGORITHMS}, got {algorithm!r}")
        summary, local = _local_summary(cross_attention_states, text_rows, cross_attention_mask, q_ranges, local_check)
        summary.update(fingerprint=(summary["fingerprint"], fingerprint), text=text, algorithm=algorithm,
                       recompute=bool(recompute_kv))
        shared: Any = summary
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        shared = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    summaries = _agree(comm, shared)

    errors = [(r, s) for r, s in enumerate(summaries) if isinstance(s, str)]
    size = len(summaries)
    if errors:
        raise lvxattn.InvalidArgumentError(_combined(errors, size))
    rank = 0 if comm is None else comm.Get_rank()
    keys = ["text", "algorithm", "recompute", "batch", "visual_dim", "dtype", "device", "mask", "tiles"]
    if text == "replicated":
        keys += ["text_rows", "fingerprint"]
    for key in keys:
        values = [s[key] for s in summaries]
        if any(v != values[0] for v in values):
            if key == "fingerprint":
                listed = "the text, mask or q_ranges differ"
            else:
                listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise lvxattn.RankMismatchError(f"ranks disagree on {key.replace('_', ' ')} ({listed})")

    kv_counts = tuple(s["visual_rows"] for s in summaries)
    visual_len = sum(kv_counts)
    text_counts = [s["text_rows"] for s in summaries]
    text_offsets = [sum(text_counts[:r]) if text == "sharded" else 0 for r in range(size)]
    mode, tiles = summaries[0]["mask"], summaries[0]["tiles"]
    per_tile = None
    if visual_len == 0:
        raise lvxattn.InvalidArgumentError("no visual tokens on any rank (the global visual length is 0)")
    if mode == "tiles":
        if visual_len % (tiles[0] * tiles[1]):
            raise lvxattn.InvalidArgumentError(
                f"the global visual length {visual_len} is not a multiple of the mask's images * tiles = "
                f"{tiles[0]} * {tiles[1]}")
        per_tile = visual_len // (tiles[0] * tiles[1])
    problems = []
    for r, s in enumerate(summaries):
        if s["bad_row"] is not None:
            b, row, runs = s["bad_row"]
            problems.append((r, _describe_bad_row(b, row + text_offsets[r], runs, tiles[1], per_tile)))
        if mode == "ranges" and s["max_end"] > visual_len:
            problems.append((r, f"q_ranges end {s['max_end']} is past the global visual length {visual_len}"))
    if problems:
        raise lvxattn.InvalidArgumentError(_combined(problems, size))

    device = cross_attention_states.device
    sees = ranges = None
    if mode == "tiles":
        first, end, sees = local
        ranges = _token_ranges(first, end, sees, per_tile, visual_len)
    elif mode == "ranges":
        sees = local[..., 0] < local[..., 1]
        ranges = torch.where(sees[..., None], local, torch.tensor([0, visual_len], device=local.device))
        ranges = ranges.to(torch.int32)
    if text == "replicated":
        q_counts = tuple(even_counts(text_counts[0], size))
        if ranges is not None:
            start = sum(q_counts[:rank])
            ranges = ranges[:, start:start + q_counts[rank]]
    else:
        q_counts = tuple(text_counts)
    if ranges is not None:
        ranges = ranges.to(device=device, dtype=torch.int32).contiguous()
        sees = sees.to(device)
    return CrossAttentionPlan(comm=comm, text=text, algorithm=algorithm, recompute_kv=bool(recompute_kv),
                              q_counts=q_counts, kv_counts=kv_counts, q_ranges=ranges, sees_image=sees)


# ---------------------------------------------------------------------------
# Rows of the text across ranks (replicated mode), differentiably


def _allgather_rows(comm, part: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """``[B, counts[rank], ...]`` on every rank -> ``[B, sum(counts), ...]`` on every rank,
    through host memory (text-sized tensors; works whether or not MPI is CUDA-aware)."""
    from mpi4py import MPI

    moved = part.detach().movedim(1, 0).to("cpu").contiguous()
    row_shape = tuple(moved.shape[1:])
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * part.element_size()
    send = moved.reshape(-1).view(torch.uint8).numpy()
    recv = np.empty(sum(counts) * row_bytes, dtype=np.uint8)
    comm.Allgatherv([send, MPI.BYTE], [recv, [c * row_bytes for c in counts], MPI.BYTE])
    whole = torch.from_numpy(recv).view(part.dtype).view(sum(counts), *row_shape)
    return whole.movedim(0, 1).to(part.device).contiguous()


def _allreduce_sum(comm, grad: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``grad`` (fp16/bf16 summed in fp32), on every rank."""
    from mpi4py import MPI

    wide = torch.float32 if grad.dtype in (torch.float16, torch.bfloat16) else grad.dtype
    host = grad.detach().to("cpu", wide, copy=True).contiguous()
    comm.Allreduce(MPI.IN_PLACE, host.numpy(), op=MPI.SUM)
    return host.to(grad.device, grad.dtype)


class _TakeRows(torch.autograd.Function):
    """Forward: this rank's share of the rows of a tensor every rank holds whole.
    Backward: the shares' gradients gathered from every rank, so the whole
    tensor's gradient is complete, and the same, on every rank."""

    @staticmethod
    def forward(ctx, whole, plan: CrossAttentionPlan):
        ctx.plan = plan
        return whole.narrow(1, plan.q_offset, plan.q_counts[plan.rank]).contiguous()

    @staticmethod
    def backward(ctx, grad):
        return _allgather_rows(ctx.plan.comm, grad, ctx.plan.q_counts), None


class _GatherRows(torch.autograd.Function):
    """Forward: every rank's share of the rows, gathered whole on every rank.
    Backward: this rank's rows of the gradient (the same on every rank, since every
    rank computes the same loss from the gathered rows)."""

    @staticmethod
    def forward(ctx, part, plan: CrossAttentionPlan):
        ctx.plan = plan
        return _allgather_rows(plan.comm, part, plan.q_counts)

    @staticmethod
    def backward(ctx, grad):
        plan = ctx.plan
        return grad.narrow(1, plan.q_offset, plan.q_counts[plan.rank]).contiguous(), None


class _SumGradOverRanks(torch.autograd.Function):
    """Identity on a weight; backward sums its gradient over the ranks."""

    @staticmethod
    def forward(ctx, weight, comm):
        ctx.comm = comm
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return _allreduce_sum(ctx.comm, grad), None


# ---------------------------------------------------------------------------
# The patched layer


def sharded_cross_attention(module: nn.Module, plan: CrossAttentionPlan, hidden_states: torch.Tensor,
                            cross_attention_states: torch.Tensor) -> torch.Tensor:
    """What a patched ``MllamaTextCrossAttention`` computes: ``o_proj`` of the attention
    of the text rows ``hidden_states`` ``[B, rows, hidden]`` (all rows when replicated,
    this rank's when sharded) over this rank's visual tokens ``[B, Lkv_local, hidden]``.
    Collective over ``plan.comm``. Returns ``[B, rows, hidden]``."""
    batch, rows, _ = hidden_states.shape
    heads, kv_heads, head_dim = module.num_heads, module.num_key_value_heads, module.head_dim
    x = cross_attention_states
    replicated = plan.text == "replicated"
    expected_rows = sum(plan.q_counts) if replicated else plan.q_counts[plan.rank]
    if rows != expected_rows or x.shape[0] != batch or x.shape[1] != plan.kv_counts[plan.rank]:
        raise ValueError(f"layer {module.layer_idx}: text {tuple(hidden_states.shape)} and visual {tuple(x.shape)} "
                         f"do not match the plan (rows {expected_rows}, visual {plan.kv_counts[plan.rank]})")
    for proj in (module.q_proj, module.k_proj, module.v_proj, module.o_proj):
        if proj.bias is not None:
            raise NotImplementedError("projections with a bias are not supported")
    if module.training and module.dropout > 0:
        raise NotImplementedError("attention dropout in training is not supported (set config.dropout = 0)")

    q = module.q_proj(hidden_states).view(batch, rows, heads, head_dim)
    q = module.q_norm(q) * module.k_norm.weight
    several = plan.comm is not None and plan.size > 1
    if replicated and several:
        q = _TakeRows.apply(q, plan)
    q = q.contiguous()
    wk, wv = module.k_proj.weight, module.v_proj.weight
    if replicated and several:
        wk, wv = _SumGradOverRanks.apply(wk, plan.comm), _SumGradOverRanks.apply(wv, plan.comm)
    eps = module.k_norm.variance_epsilon
    settings = AttentionSettings(comm=plan.comm, algorithm=plan.algorithm, scale=module.scaling)
    if plan.recompute_kv:
        o = RecomputedKvAttention.apply(q, x, wk, wv, plan.q_ranges, kv_heads, head_dim, eps, settings,
                                        plan.visual_grad)
    else:
        k, v = KvProjection.apply(x, wk, wv, kv_heads, head_dim, eps, plan.visual_grad)
        o = lvxattn.cross_attention(q, k, v, comm=plan.comm, algorithm=plan.algorithm, q_ranges=plan.q_ranges,
                                    scale=module.scaling)
    o = o.reshape(batch, o.shape[1], heads * head_dim)
    if replicated and several:
        o = _GatherRows.apply(o, plan)
    return module.o_proj(o)


def _patched_forward(self, hidden_states, cross_attention_states=None, past_key_values=None, attention_mask=None,
                     use_cache=None, **kwargs):
    plan = attention_mask
    if not isinstance(plan, CrossAttentionPlan):
        raise TypeError(f"layer {self.layer_idx} runs through lvxattn: call the model through ShardedMllama, or pass "
                        "a CrossAttentionPlan as cross_attention_mask (got "
                        f"{type(plan).__name__}); lvxattn.integrations.mllama.unpatch restores the model")
    if cross_attention_states is None or past_key_values is not None:
        raise NotImplementedError("the lvxattn cross-attention layers need cross_attention_states and no KV cache "
                                  "(use_cache=False)")
    return sharded_cross_attention(self, plan, hidden_states, cross_attention_states), None


def _cross_attention_layers(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, hf_mllama.MllamaTextCrossAttention)]


def patch(model: nn.Module) -> int:
    """Makes every ``MllamaTextCrossAttention`` in ``model`` run through lvxattn (its
    ``forward`` is replaced on the instance; idempotent). Returns how many layers.
    The patched layers take a ``CrossAttentionPlan`` in place of their attention mask."""
    layers = _cross_attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MllamaTextCrossAttention layer")
    for layer in layers:
        layer.forward = MethodType(_patched_forward, layer)
    return len(layers)


def unpatch(model: nn.Module) -> None:
    """Restores the model's own cross-attention forward."""
    for layer in _cross_attention_layers(model):
        layer.__dict__.pop("forward", None)


def shard_visual(states: torch.Tensor, comm=None, counts: Sequence[int] | None = None) -> torch.Tensor:
    """This rank's contiguous piece of the whole visual sequence ``[B, Lkv, hidden]``
    (``counts``: tokens per rank; default: as even as possible). A view."""
    size = 1 if comm is None else comm.Get_size()
    rank = 0 if comm is None else comm.Get_rank()
    counts = even_counts(states.shape[1], size) if counts is None else [int(c) for c in counts]
    if len(counts) != size or sum(counts) != states.shape[1] or min(counts) < 0:
        raise ValueError(f"counts {counts} must be {size} non-negative numbers summing to {states.shape[1]}")
    return states.narrow(1, sum(counts[:rank]), counts[rank])


# ---------------------------------------------------------------------------
# The model wrapper


class ShardedMllama(nn.Module):
    """A transformers Mllama model whose cross-attention layers run through lvxattn.

    model: ``MllamaForConditionalGeneration``, ``MllamaModel``, ``MllamaForCausalLM`` or
    ``MllamaTextModel`` (patched in place; ``remove()`` restores it). comm: an mpi4py
    communicator or None (one process). text: ``"replicated"`` or ``"sharded"`` (module
    doc). algorithm: as ``lvxattn.cross_attention``. recompute_kv: keep only the visual
    states and rebuild every layer's K/V from them in backward (DESIGN.md, Explicit
    recompute); results are identical either way.

    ``forward(input_ids | inputs_embeds, cross_attention_states, cross_attention_mask,
    *, q_ranges, attention_mask, position_ids, labels, **kwargs)``: as the model's
    forward with the visual tokens ``cross_attention_states`` ``[B, Lkv_local, hidden]``
    (after the projector; this rank's contiguous piece) and the mask in the model's
    form ``[B, Lq, images, tiles]`` (or ``q_ranges``) for the text rows this rank
    passes. Returns ``CausalLMOutputWithPast`` (logits of those rows, and the loss
    when ``labels`` are given, replicated mode only) or, for a model without a head,
    ``BaseModelOutputWithPast``. Collective over ``comm``; bad input raises on every
    rank (``plan_cross_attention``). Vision encoder inputs (``pixel_values``) are not
    taken: run the encoder and projector, then shard their output.
    """

    def __init__(self, model: nn.Module, comm=None, *, text: str = "replicated", algorithm: str = "lvx",
                 recompute_kv: bool = False):
        super().__init__()
        if text not in TEXT_MODES:
            raise ValueError(f"text must be one of {TEXT_MODES}, got {text!r}")
        if algorithm not in lvxattn.ALGORITHMS:
            raise ValueError(f"algorithm must be one of {lvxattn.ALGORITHMS}, got {algorithm!r}")
        text_models = [m for m in model.modules() if isinstance(m, hf_mllama.MllamaTextModel)]
        if len(text_models) != 1:
            raise ValueError(f"{type(model).__name__} must hold exactly one MllamaTextModel, found {len(text_models)}")
        self.model = model
        self.comm, self.text, self.algorithm, self.recompute_kv = comm, text, algorithm, bool(recompute_kv)
        self._text_model = text_models[0]   # not a submodule: it is already inside self.model
        self.layers = patch(model)

    def remove(self) -> nn.Module:
        """Unpatches the model and returns it."""
        unpatch(self.model)
        return self.model

    def forward(self, input_ids=None, cross_attention_states=None, cross_attention_mask=None, *, q_ranges=None,
                attention_mask=None, position_ids=None, inputs_embeds=None, labels=None, **kwargs):
        text_model = self._text_model
        text_input = input_ids if input_ids is not None else inputs_embeds

        def local_check():
            if (input_ids is None) == (inputs_embeds is None):
                raise ValueError("give exactly one of input_ids and inputs_embeds")
            if self.text == "sharded" and text_rows < 1:
                raise ValueError("text='sharded' needs at least one text row on every rank (the model's own "
                                 "layers do not take an empty sequence)")
            if self.text == "sharded" and labels is not None:
                raise ValueError("labels need the whole text; with text='sharded' compute the loss from the logits")
            if cross_attention_states is not None and cross_attention_states.dim() == 3 and \
                    cross_attention_states.shape[2] != text_model.config.hidden_size:
                raise ValueError(f"cross_attention_states must have the model's hidden size "
                                 f"{text_model.config.hidden_size}, got {cross_attention_states.shape[2]}")
            if text_input.shape[0] != cross_attention_states.shape[0]:
                raise ValueError(f"text batch {text_input.shape[0]} != visual batch {cross_attention_states.shape[0]}")
            if self.training and text_model.config.dropout > 0:
                raise NotImplementedError("attention dropout in training is not supported (config.dropout > 0)")

        fingerprint = _fingerprint(text_input, labels) if self.text == "replicated" else None
        text_rows = text_input.shape[1] if isinstance(text_input, torch.Tensor) and text_input.dim() >= 2 else -1
        plan = plan_cross_attention(cross_attention_states, text_rows, comm=self.comm, text=self.text,
                                    cross_attention_mask=cross_attention_mask, q_ranges=q_ranges,
                                    algorithm=self.algorithm, recompute_kv=self.recompute_kv,
                                    fingerprint=fingerprint, local_check=local_check)
        visual = cross_attention_states
        if visual.requires_grad and torch.is_grad_enabled():
            # One dX buffer for all layers (layers.VisualGrad) instead of one per layer.
            grad = VisualGrad()
            visual = SharedVisual.apply(visual, grad)
            plan = dataclasses.replace(plan, visual_grad=grad)
        dtype = text_model.embed_tokens.weight.dtype
        outputs = text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             cross_attention_states=visual, cross_attention_mask=plan,
                             full_text_row_masked_out_mask=plan.full_text_row_masked_out_mask(dtype),
                             inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
        head = getattr(self.model, "lm_head", None)
        if head is None:
            return outputs
        logits = head(outputs.last_hidden_state)
        if isinstance(self.model, hf_mllama.MllamaForCausalLM):
            logits = logits.float()   # as that class does
        loss = None
        if labels is not None:
            vocab = self.model.config.get_text_config().vocab_size
            loss = self.model.loss_function(logits, labels, vocab, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
