"""transformers' Mllama through lvxattn.integrations.mllama against the unpatched model.

Tiny random models built from ``MllamaConfig`` (no download). Each case runs the
unpatched model on the whole problem, then the patched one with the visual tokens
split unevenly over P = 1, 2, 3 ranks (one rank holding none), and compares
logits, loss, the gradient of every parameter and of the visual states. The
mask interleaves three images of two tiles with the text: rows that see no
image, one (one tile or both), several, and only a later one. Bad input (a mask
row that is not one interval, ranks that disagree) must fail on every rank.

Single-process cases run in ``make test-python``; the ``mpi`` ones under
``mpirun -n 4 python -m pytest --with-mpi -m mpi tests/python/test_mllama.py``
(sub-communicators of 1, 2 and 3 ranks).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")
from transformers import MllamaConfig, MllamaForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import lvxattn  # noqa: E402
from lvxattn.integrations import mllama as lvx_mllama  # noqa: E402
from dist_util import shard, sub_comm, uneven_split  # noqa: E402
from lvxattn.reference import rel_err  # noqa: E402

mpi = pytest.importorskip("mpi4py.MPI")
WORLD = mpi.COMM_WORLD
hf_logging.set_verbosity_error()   # tiny vocabularies make the config warn about special token ids
# A rank left waiting in MPI cannot be interrupted by a signal: end the process instead.
pytestmark = pytest.mark.timeout(300, method="thread")

HIDDEN, IMAGES, TILES = 32, 3, 2
# fp32, relative (norm-wise): lvxattn's kernels against the model's SDPA. The largest
# errors are the gates' (scalars summed over every row): 7e-5 seen at hidden 512.
TOL = 1e-4


def tiny_model(layers=4, cross=(1, 3), seed=0, hidden=HIDDEN) -> MllamaForConditionalGeneration:
    """A random Mllama: 4 query heads, 2 KV heads (GQA), head dim hidden / 4 (8); 8x8
    images in 4x4 patches give 5 visual tokens per tile. Gates and norm weights are
    random so that every parameter has a gradient that matters."""
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_global_layers=1,
                  attention_heads=2, image_size=8, patch_size=4, max_num_tiles=TILES, vision_output_dim=32,
                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1], [1, 2]])
    text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, cross_attention_layers=list(cross), vocab_size=50,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name:
                p.uniform_(0.3, 1.0, generator=gen)
            elif p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def tokens_per_tile(model) -> int:
    return model.model.vision_model.num_patches


def interleaved_mask(batch: int, rows: int) -> torch.Tensor:
    """``[B, rows, images, tiles]``: rows that see nothing, one tile, one image,
    several images, and only a later image (OpenFlamingo-like)."""
    m = torch.zeros(batch, rows, IMAGES, TILES, dtype=torch.long)
    edges = [0, rows // 6, 2 * rows // 6, 3 * rows // 6, 4 * rows // 6, 5 * rows // 6, rows]
    m[:, edges[1]:edges[2], 0, 0] = 1            # image 0's first tile only
    m[:, edges[2]:edges[3], 0, :] = 1            # image 0
    m[:, edges[3]:edges[4], :2, :] = 1           # images 0 and 1
    m[:, edges[4]:, :, :] = 1                    # all three
    if batch > 1:
        m[1, edges[4]:edges[5]] = 0
        m[1, edges[4]:edges[5], 2, :] = 1        # only the last image
        m[1, edges[5]:] = 0                      # nothing again
    return m


def problem(batch=2, rows=12, seed=0, hidden=HIDDEN, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (batch, rows), generator=gen)
    visual = torch.randn(batch, IMAGES * TILES * 5, hidden, generator=gen)
    return ids.to(device), visual.to(device), interleaved_mask(batch, rows).to(device)


def reference_run(model, ids, visual, mask, loss_weights=None):
    """The unpatched model on the whole problem: (logits, loss, parameter grads, visual grad)."""
    model = copy.deepcopy(model)
    x = visual.clone().requires_grad_(True)
    batch, length, hidden = x.shape
    per_tile = tokens_per_tile(model)
    out = model(input_ids=ids, cross_attention_states=x.view(batch * length // per_tile, per_tile, hidden),
                cross_attention_mask=mask, labels=ids if loss_weights is None else None)
    loss = out.loss if loss_weights is None else (out.logits * loss_weights).sum()
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return out.logits.detach(), loss.detach(), grads, x.grad


def check_grads(got: dict, want: dict, what: str, tol: float = TOL):
    assert got.keys() == want.keys()
    bad = {}
    for name, g in want.items():
        if g is None:
            assert got[name] is None, f"{what}: {name} has a gradient the model does not give it"
            continue
        err = rel_err(got[name], g)
        if not err < tol:
            bad[name] = err
    assert not bad, f"{what}: {bad}"
    assert any(g is not None and "cross_attn.k_proj" in n for n, g in want.items())


def run_replicated(comm, algorithm="lvx", recompute=False, zero_kv=None, seed=0, device="cpu", hidden=HIDDEN,
                   tol=TOL, rows=12, weighted=False):
    """``weighted``: the loss is ``sum(logits * W)`` instead of the model's loss on labels
    (with 2 rows the labels' loss leaves the self-attention gradients exactly 0)."""
    model = tiny_model(seed=seed, hidden=hidden).to(device)
    ids, visual, mask = problem(rows=rows, seed=seed, hidden=hidden, device=device)
    weights = torch.randn(ids.shape[0], rows, 50, generator=torch.Generator().manual_seed(seed)).to(device) \
        if weighted else None
    ref_logits, ref_loss, ref_grads, ref_dx = reference_run(model, ids, visual, mask, weights)

    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    counts = uneven_split(visual.shape[1], size, zero_kv, seed)
    sharded = lvx_mllama.ShardedMllama(model, comm, algorithm=algorithm, recompute_kv=recompute)
    x = shard(visual, counts, rank).requires_grad_(True)
    lvxattn.reset_stats()
    out = sharded(input_ids=ids, cross_attention_states=x, cross_attention_mask=mask,
                  labels=None if weighted else ids)
    loss = (out.logits * weights).sum() if weighted else out.loss
    loss.backward()
    what = f"P={size} {algorithm} recompute={recompute} text {rows} rows, visual split {counts}"
    # Two cross-attention layers went through lvxattn, forward and backward.
    assert lvxattn.total_stats()["forward"]["calls"] == 2 and lvxattn.total_stats()["backward"]["calls"] == 2
    assert rel_err(out.logits, ref_logits) < tol, what
    assert abs(float(loss.detach()) - float(ref_loss)) < tol * abs(float(ref_loss)), what
    check_grads({n: p.grad for n, p in model.named_parameters()}, ref_grads, what, tol)
    assert rel_err(x.grad, shard(ref_dx, counts, rank)) < tol, what
    sharded.remove()


def run_sharded_text(comm, recompute=False, zero_q=None, zero_kv=None, seed=1):
    """Text split too: a stack of cross-attention layers only (so every text layer is
    row-wise); parameter gradients summed over ranks equal the model's."""
    model = tiny_model(layers=2, cross=(0, 1), seed=seed)
    ids, visual, mask = problem(rows=13, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    weights = torch.randn(ids.shape[0], ids.shape[1], 50, generator=gen)
    ref_logits, ref_loss, ref_grads, ref_dx = reference_run(model, ids, visual, mask, weights)

    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    q_counts = uneven_split(ids.shape[1], size, zero_q, seed)
    kv_counts = uneven_split(visual.shape[1], size, zero_kv, seed + 1)
    sharded = lvx_mllama.ShardedMllama(model, comm, text="sharded", recompute_kv=recompute)
    x = shard(visual, kv_counts, rank).requires_grad_(True)
    out = sharded(input_ids=shard(ids, q_counts, rank), cross_attention_states=x,
                  cross_attention_mask=shard(mask, q_counts, rank))
    loss = (out.logits * shard(weights, q_counts, rank)).sum()
    loss.backward()
    what = f"P={size} sharded text {q_counts} recompute={recompute} visual split {kv_counts}"
    assert rel_err(out.logits, shard(ref_logits, q_counts, rank)) < TOL, what
    total = float(loss.detach()) if comm is None else comm.allreduce(float(loss.detach()))
    assert abs(total - float(ref_loss)) < TOL * abs(float(ref_loss)), what
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is not None and comm is not None:
            g = comm.allreduce(g)
        grads[name] = g
    check_grads(grads, ref_grads, what)
    assert rel_err(x.grad, shard(ref_dx, kv_counts, rank)) < TOL, what
    sharded.remove()


# ---------------------------------------------------------------------------
# One process


@pytest.mark.parametrize("recompute", [False, True])
def test_one_process_matches_model(recompute):
    run_replicated(None, recompute=recompute)
    run_sharded_text(None, recompute=recompute)


def test_q_ranges_from_mask_against_token_level_mask():
    """Brute force: expand the mask to every visual token as the model does
    (repeat_interleave over the tile axis) and read each row's visible interval."""
    mask = interleaved_mask(2, 12)
    per_tile = 7
    visual_len = IMAGES * TILES * per_tile
    ranges, sees = lvx_mllama.q_ranges_from_mask(mask, visual_len)
    tokens = (mask == 1).repeat_interleave(per_tile, dim=3).reshape(2, 12, visual_len)
    for b in range(2):
        for row in range(12):
            cols = tokens[b, row].nonzero().flatten().tolist()
            if cols:
                assert cols == list(range(cols[0], cols[-1] + 1))
                want = [cols[0], cols[-1] + 1]
            else:
                want = [0, visual_len]   # sees nothing: the model attends to every token
            assert ranges[b, row].tolist() == want, (b, row)
            assert bool(sees[b, row]) == bool(cols)
    assert ranges.dtype == torch.int32 and ranges.shape == (2, 12, 2)


def test_mask_values_other_than_one_are_masked_as_in_the_model():
    mask = interleaved_mask(1, 6)
    mask[0, 5, 2, :] = 2       # the model treats 1 - 2 != 0 as masked
    ranges, _ = lvx_mllama.q_ranges_from_mask(mask, IMAGES * TILES * 5)
    assert ranges[0, 5].tolist() == [0, 20]


def test_row_that_is_not_one_interval_is_named():
    mask = interleaved_mask(2, 12)
    mask[1, 9] = 0
    mask[1, 9, 0, :] = 1
    mask[1, 9, 2, 1] = 1       # image 0 and image 2's second tile, not image 1
    with pytest.raises(lvxattn.InvalidArgumentError, match=r"text row 9 of batch 1 .*visual tokens \[0, 10\).*\[25, 30\)"):
        lvx_mllama.q_ranges_from_mask(mask, IMAGES * TILES * 5)


def test_q_ranges_input_matches_mask_input():
    model = tiny_model()
    ids, visual, mask = problem()
    ranges, sees = lvx_mllama.q_ranges_from_mask(mask, visual.shape[1])
    ranges[~sees] = torch.tensor([4, 4], dtype=torch.int32)   # an empty interval: a row that sees no image
    sharded = lvx_mllama.ShardedMllama(model)
    by_mask = sharded(input_ids=ids, cross_attention_states=visual, cross_attention_mask=mask).logits
    by_ranges = sharded(input_ids=ids, cross_attention_states=visual, q_ranges=ranges).logits
    assert torch.equal(by_mask, by_ranges)


def test_patched_layer_refuses_a_call_without_a_plan_and_unpatch_restores():
    model = tiny_model()
    ids, visual, mask = problem()
    per_tile = tokens_per_tile(model)
    args = dict(input_ids=ids, cross_attention_mask=mask,
                cross_attention_states=visual.view(-1, per_tile, HIDDEN))
    want = model(**args).logits
    sharded = lvx_mllama.ShardedMllama(model)
    with pytest.raises(TypeError, match="ShardedMllama"):
        model(**args)
    assert sharded.remove() is model
    assert torch.equal(model(**args).logits, want)


# ---------------------------------------------------------------------------
# Several ranks


def rank_counts():
    return range(1, min(3, WORLD.size) + 1)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("algorithm,recompute", [("lvx", False), ("lvx", True), ("ring", False)])
def test_replicated_text_matches_model(algorithm, recompute):
    for P in rank_counts():
        with sub_comm(WORLD, P) as comm:
            if comm is not None:
                run_replicated(comm, algorithm, recompute, zero_kv=1 if P > 1 else None)


@pytest.mark.mpi(min_size=1)
def test_replicated_text_shorter_than_the_ranks():
    """2 text rows over up to 3 ranks: a rank attends with no rows (and holds no visual tokens)."""
    for P in rank_counts():
        with sub_comm(WORLD, P) as comm:
            if comm is not None:
                run_replicated(comm, recompute=True, zero_kv=P - 1 if P > 1 else None, rows=2, weighted=True)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("recompute", [False, True])
def test_sharded_text_matches_model(recompute):
    for P in rank_counts():
        with sub_comm(WORLD, P) as comm:
            if comm is not None:
                run_sharded_text(comm, recompute, zero_kv=0 if P > 1 else None)


def fails_everywhere(comm, exc_type, pattern, call):
    """``call()`` must raise ``exc_type`` matching ``pattern`` on this rank; then every
    rank confirms it did (a rank that returned would make this allgather show it)."""
    raised = None
    try:
        call()
    except exc_type as exc:
        raised = str(exc)
    everyone = comm.allgather(raised)
    assert all(m is not None for m in everyone), everyone
    import re
    assert all(re.search(pattern, m) for m in everyone), everyone


@pytest.mark.mpi(min_size=2)
def test_bad_input_fails_on_every_rank():
    model = tiny_model()
    ids, visual, mask = problem()
    want = reference_run(model, ids, visual, mask)[0]
    for P in range(2, min(3, WORLD.size) + 1):
        with sub_comm(WORLD, P) as comm:
            if comm is None:
                continue
            rank = comm.rank
            counts = uneven_split(visual.shape[1], P, None, 0)
            x = shard(visual, counts, rank)
            sharded = lvx_mllama.ShardedMllama(model, comm)

            gap = mask.clone()
            gap[0, 8] = 0
            gap[0, 8, 0, 0] = 1
            gap[0, 8, 2, :] = 1
            fails_everywhere(comm, lvxattn.InvalidArgumentError, r"text row 8 of batch 0 .*not|one interval",
                             lambda: sharded(input_ids=ids, cross_attention_states=x, cross_attention_mask=gap))

            # Sharded text: the bad row is only in the last rank's piece; every rank names it by its global row.
            rows = uneven_split(ids.shape[1], P, None, 0)
            last = sum(rows[:-1])
            gap_last = mask.clone()
            gap_last[1, last] = 0
            gap_last[1, last, 0, :] = 1
            gap_last[1, last, 2, :] = 1
            text_sharded = lvx_mllama.ShardedMllama(model, comm, text="sharded")
            fails_everywhere(comm, lvxattn.InvalidArgumentError, rf"rank {P - 1}: .*text row {last} of batch 1",
                             lambda: text_sharded(input_ids=shard(ids, rows, rank), cross_attention_states=x,
                                                  cross_attention_mask=shard(gap_last, rows, rank)))

            # Sharded text with a rank that holds none (the model's own layers take no empty sequence).
            none = [ids.shape[1] - (P - 2)] + [1] * (P - 2) + [0]
            fails_everywhere(comm, lvxattn.InvalidArgumentError, rf"rank {P - 1}: .*at least one text row",
                             lambda: text_sharded(input_ids=shard(ids, none, rank), cross_attention_states=x,
                                                  cross_attention_mask=shard(mask, none, rank)))

            # Replicated text of different lengths on different ranks.
            short = 1 if rank == 1 else 0
            fails_everywhere(comm, lvxattn.RankMismatchError, "ranks disagree on text rows",
                             lambda: sharded(input_ids=ids[:, short:], cross_attention_states=x,
                                             cross_attention_mask=mask[:, short:]))
            # Same lengths, different text.
            other = ids.clone()
            other[0, 0] += rank
            fails_everywhere(comm, lvxattn.RankMismatchError, "ranks disagree on fingerprint",
                             lambda: sharded(input_ids=other, cross_attention_states=x, cross_attention_mask=mask))
            # One rank's visual tokens have the wrong width.
            wide = torch.randn(2, counts[rank], HIDDEN + (rank == 0)) if rank == 0 else x
            fails_everywhere(comm, lvxattn.InvalidArgumentError, "rank 0: .*hidden size",
                             lambda: sharded(input_ids=ids, cross_attention_states=wide, cross_attention_mask=mask))
            # Ranks configured differently.
            mixed = lvx_mllama.ShardedMllama(model, comm, algorithm="ring" if rank == 0 else "lvx")
            fails_everywhere(comm, lvxattn.RankMismatchError, r"ranks disagree on algorithm \(rank 0: ring, rank 1: lvx",
                             lambda: mixed(input_ids=ids, cross_attention_states=x, cross_attention_mask=mask))
            # The global visual length does not split into the mask's tiles.
            cut = x[:, :-1] if rank == P - 1 and x.shape[1] else x
            fails_everywhere(comm, lvxattn.InvalidArgumentError, "not a multiple",
                             lambda: sharded(input_ids=ids, cross_attention_states=cut, cross_attention_mask=mask))

            # The communicator is still usable: a good call after the failed ones.
            out = sharded(input_ids=ids, cross_attention_states=x, cross_attention_mask=mask, labels=ids)
            assert rel_err(out.logits, want) < TOL
            sharded.remove()


# ---------------------------------------------------------------------------
# GPU (one process): the CUDA backend inside the model, head dim 128 as in Llama 3.2 Vision


def needs_gpu(test):
    for mark in (pytest.mark.gpu,
                 pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
                 pytest.mark.skipif(not lvxattn.cuda_built(), reason="built without the CUDA backend")):
        test = mark(test)
    return test


@needs_gpu
@pytest.mark.parametrize("recompute", [False, True])
def test_gpu_fp32_matches_model(recompute):
    # Looser than on the CPU: the CUDA backend adds dK, dV with atomics (any order).
    run_replicated(None, recompute=recompute, device="cuda", hidden=512, tol=3 * TOL)


@needs_gpu
@pytest.mark.parametrize("recompute", [False, True])
def test_gpu_bf16_no_worse_than_the_models_own_bf16(recompute):
    """bf16 rounds differently in lvxattn and in the model's SDPA: both are measured
    against the model in float64, and lvxattn may be off by at most twice as much.
    Two layers (self, cross) and all parameter gradients as one vector: bf16
    gradients of deeper random stacks and of single scalars (the gates) are too
    noisy to tell one rounding from another (seen on the CPU backend)."""
    model = tiny_model(layers=2, cross=(1,), hidden=512).cuda()
    ids, visual, mask = problem(hidden=512, device="cuda")
    exact = reference_run(model.double(), ids, visual.double(), mask)
    own = reference_run(model.bfloat16(), ids, visual.bfloat16(), mask)
    sharded = lvx_mllama.ShardedMllama(model, recompute_kv=recompute)
    x = visual.bfloat16().requires_grad_(True)
    out = sharded(input_ids=ids, cross_attention_states=x, cross_attention_mask=mask, labels=ids)
    out.loss.backward()
    names = [n for n, g in exact[2].items() if g is not None]

    def flat(grads):
        return torch.cat([grads[n].double().flatten() for n in names])

    ours = (out.logits, out.loss.detach(), flat({n: p.grad for n, p in model.named_parameters()}), x.grad)
    exact, own = (exact[0], exact[1], flat(exact[2]), exact[3]), (own[0], own[1], flat(own[2]), own[3])
    for what, got, base, want in zip(("logits", "loss", "parameter gradients", "visual gradient"), ours, own, exact):
        assert rel_err(got, want) <= 2 * rel_err(base, want) + 1e-3, (what, rel_err(got, want), rel_err(base, want))
