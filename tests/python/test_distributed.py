"""lvx, ring and ulysses under MPI against the float64 single-process reference:
P = 1..world size (sub-communicators), uneven shards with ranks that own no
query or no KV rows, GQA, both MLLM mask styles, B > 1, fp32 and bf16; exact
byte counts; shapes that change between calls.

Run with: mpirun -n 4 python -m pytest --with-mpi -m mpi tests/python/test_distributed.py
"""

import pytest
import torch

import lvxattn
from dist_util import errors_against_reference, lvx_form, shard, sub_comm, uneven_split
from cases import TOL

mpi = pytest.importorskip("mpi4py.MPI")
WORLD = mpi.COMM_WORLD


def run_and_check(comm, algorithm, B, Lq, Lkv, Hq, Hkv, D, dtype, mask, zero_q=None, zero_kv=None, seed=0):
    """algorithm: lvx, ring, ulysses, or lvx/ring, lvx/gather to force lvx's form."""
    algorithm, _, form = algorithm.partition("/")
    P, rank = comm.size, comm.rank
    gen = torch.Generator().manual_seed(seed)  # same global problem on every rank
    q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
    k = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype)
    v = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype)
    do = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
    ranges = None
    if mask is not None:
        ranges = lvxattn.masks.interleaved_ranges(B, Lq, Lkv, num_images=4, style=mask)
    lq = uneven_split(Lq, P, zero_q, seed)
    lkv = uneven_split(Lkv, P, zero_kv, seed + 1)

    ql = shard(q, lq, rank).requires_grad_()
    kl = shard(k, lkv, rank).requires_grad_()
    vl = shard(v, lkv, rank).requires_grad_()
    rl = None if ranges is None else shard(ranges, lq, rank)
    with lvx_form(form):
        o, lse = lvxattn.cross_attention_forward(ql, kl, vl, comm=comm, algorithm=algorithm, q_ranges=rl)
        o.backward(shard(do, lq, rank))
    if form and P > 1:
        got = lvxattn.last_stats()["lvx_form"]
        assert got == form or (form == "gather" and got in ("overlap", "single")), (form, got)

    tol = TOL[dtype]
    errs = errors_against_reference(comm, (q, k, v, do), ranges, o, lse, (ql, kl, vl))
    bad = {name: e for name, e in errs.items() if not e < (tol / 10 if name == "lse" else tol * 2)}
    assert not bad, f"{algorithm} P={P} lq={lq} lkv={lkv}: {bad}"
    return lq, lkv


CASES = [
    # algorithm, B, Lq, Lkv, Hq, Hkv, D, dtype, mask
    ("lvx", 1, 40, 300, 8, 2, 32, torch.float32, None),
    ("lvx", 3, 23, 150, 4, 4, 64, torch.bfloat16, "all_previous"),
    ("lvx", 2, 31, 211, 8, 2, 32, torch.float32, "latest"),
    ("lvx/gather", 1, 40, 300, 8, 2, 32, torch.float32, "all_previous"),
    ("lvx/gather", 3, 23, 150, 4, 4, 64, torch.bfloat16, None),
    ("lvx/gather", 2, 31, 211, 8, 2, 32, torch.float32, "latest"),
    ("lvx/overlap", 2, 17, 90, 4, 2, 32, torch.bfloat16, "all_previous"),
    ("lvx/overlap", 1, 33, 120, 8, 4, 64, torch.float32, None),
    ("lvx/single", 2, 17, 90, 4, 2, 32, torch.bfloat16, "latest"),
    ("lvx/single", 1, 33, 120, 8, 4, 64, torch.float32, "all_previous"),
    ("ring", 1, 40, 300, 8, 2, 32, torch.float32, "all_previous"),
    ("ring", 3, 23, 150, 4, 4, 64, torch.bfloat16, None),
    ("ring", 2, 31, 211, 8, 2, 32, torch.float32, "latest"),
    ("ulysses", 2, 29, 190, 12, 12, 32, torch.float32, "all_previous"),
    ("ulysses", 1, 40, 256, 24, 12, 32, torch.bfloat16, "latest"),
]


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[7]}-{c[8]}".replace("torch.", "") for c in CASES])
def test_algorithms_match_reference_at_every_rank_count(case):
    algorithm, B, Lq, Lkv, Hq, Hkv, D, dtype, mask = case
    for P in range(1, WORLD.size + 1):
        if algorithm == "ulysses" and (Hq % P or Hkv % P):
            continue
        with sub_comm(WORLD, P) as comm:
            if comm is None:
                continue
            run_and_check(comm, algorithm, B, Lq, Lkv, Hq, Hkv, D, dtype, mask, seed=P)
            if P >= 2:  # a rank with no query rows and another with no KV rows
                run_and_check(comm, algorithm, B, Lq, Lkv, Hq, Hkv, D, dtype, mask,
                              zero_q=0, zero_kv=P - 1, seed=10 + P)


def expected_bytes(algorithm, phase, P, rank, lq, lkv, B, Hq, Hkv, D, es, has_ranges, gather=False):
    """Bytes this rank sends, from DESIGN.md's table, block by block."""
    blk = lambda rows, t: rows[(rank - t) % P]  # block held at step t
    rng = 8 * B if has_ranges else 0
    if algorithm == "lvx" and gather:  # own block to every other rank, their results home
        others = sum(lq) - lq[rank]
        if phase == "forward":
            return (P - 1) * lq[rank] * (B * Hq * D * es + rng) + others * 4 * (B * Hq * D + B * Hq)
        return (P - 1) * lq[rank] * (2 * B * Hq * D * es + 8 * B * Hq + rng) + others * 4 * B * Hq * D
    if algorithm == "lvx" and phase == "forward":
        return sum(blk(lq, t) * (B * Hq * D * es + rng) for t in range(P - 1)) + \
               sum(blk(lq, t) * 4 * (B * Hq * D + B * Hq) for t in range(P))
    if algorithm == "lvx":
        return sum(blk(lq, t) * (2 * B * Hq * D * es + 8 * B * Hq + rng) for t in range(P - 1)) + \
               sum(blk(lq, t) * 4 * B * Hq * D for t in range(P))
    if phase == "forward":
        return sum(blk(lkv, t) * 2 * B * Hkv * D * es for t in range(P - 1))
    return sum(blk(lkv, t) * 2 * B * Hkv * D * es for t in range(P - 1)) + \
        sum(blk(lkv, t) * 8 * B * Hkv * D for t in range(P))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bytes_sent_match_the_formula_and_lvx_sends_less(dtype):
    comm, P, rank = WORLD, WORLD.size, WORLD.rank
    B, Hq, Hkv, D = 1, 4, 4, 16
    Lq, Lkv = 24, 24 * 8  # Lkv·Hkv = 8·Lq·Hq: lvx must move fewer bytes
    lq, lkv = uneven_split(Lq, P, None, 2), uneven_split(Lkv, P, None, 3)
    es = torch.tensor([], dtype=dtype).element_size()
    sent = {}
    for algorithm in ("lvx", "ring"):
        gen = torch.Generator().manual_seed(7)
        q = torch.randn(B, lq[rank], Hq, D, generator=gen).to(dtype).requires_grad_()
        k = torch.randn(B, lkv[rank], Hkv, D, generator=gen).to(dtype).requires_grad_()
        v = torch.randn(B, lkv[rank], Hkv, D, generator=gen).to(dtype).requires_grad_()
        ranges = torch.zeros(B, lq[rank], 2, dtype=torch.int32)
        ranges[..., 1] = Lkv
        lvxattn.cross_attention(q, k, v, comm=comm, algorithm=algorithm, q_ranges=ranges).sum().backward()
        stats = lvxattn.last_stats()
        assert stats["algorithm"] == algorithm and stats["path"] == "mpi"
        for phase in ("forward", "backward"):
            want = expected_bytes(algorithm, phase, P, rank, lq, lkv, B, Hq, Hkv, D, es, True,
                                  stats.get("lvx_gather", False))
            assert stats[phase]["bytes_sent"] == want, (algorithm, phase)
            total = comm.allreduce(stats[phase]["bytes_sent"])
            assert comm.allreduce(stats[phase]["bytes_recv"]) == total
            sent[algorithm, phase] = total
            assert stats[phase]["compute_s"] > 0 and stats[phase]["total_s"] >= stats[phase]["blocked_s"]
    assert sent["lvx", "forward"] < sent["ring", "forward"]
    assert sent["lvx", "backward"] < sent["ring", "backward"]


@pytest.mark.mpi(min_size=2)
def test_total_stats_sum_every_call():
    # More calls than a context keeps unread (PhaseLog::kMaxPending = 32), so the
    # oldest timings are read on the way and the newest at total_stats().
    comm, rank = WORLD, WORLD.rank
    lq, lkv = uneven_split(10, comm.size, None, 1), uneven_split(50, comm.size, None, 2)
    q = torch.randn(1, lq[rank], 2, 8, requires_grad=True)
    k = torch.randn(1, lkv[rank], 2, 8, requires_grad=True)
    v = torch.randn(1, lkv[rank], 2, 8, requires_grad=True)
    lvxattn.reset_stats()
    calls = 40
    for n in range(calls):
        o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm="lvx")
        if n % 2 == 0:
            o.sum().backward()
    last = lvxattn.last_stats()
    totals = lvxattn.total_stats()
    assert totals["forward"]["calls"] == calls and totals["backward"]["calls"] == calls // 2
    for phase, n in (("forward", calls), ("backward", calls // 2)):
        assert totals[phase]["bytes_sent"] == n * last[phase]["bytes_sent"]
        assert totals[phase]["total_s"] >= totals[phase]["compute_s"] > 0
    lvxattn.reset_stats()
    assert lvxattn.total_stats() == {}


@pytest.mark.mpi(min_size=2)
def test_changing_shapes_and_algorithms_between_calls():
    comm = WORLD
    for n, (Lq, Lkv, D, algorithm) in enumerate([(9, 70, 32, "lvx"), (30, 20, 16, "ring"),
                                                 (9, 70, 32, "ring"), (17, 333, 64, "lvx")]):
        run_and_check(comm, algorithm, 2, Lq, Lkv, 4, 2, D, torch.float32, None, seed=100 + n)


@pytest.mark.mpi(min_size=2)
def test_auto_reports_the_algorithm_it_ran():
    comm = WORLD
    q = torch.randn(1, 2, 4, 16)
    k, v = torch.randn(1, 400, 4, 16), torch.randn(1, 400, 4, 16)
    lvxattn.cross_attention(q, k, v, comm=comm, algorithm="auto")
    assert lvxattn.last_stats()["algorithm"] in ("lvx", "ring", "ulysses")


@pytest.mark.mpi(min_size=2)
def test_gather_picks_single_or_overlap_by_the_plan_rule():
    # overlap iff min shard Lkv·Hkv < 1.5 · (Lq·Hq of the other ranks) (cost_model.hpp)
    comm, P, rank = WORLD, WORLD.size, WORLD.rank
    for lq, lkv, want in ((8, 64 * P, "single"), (40, 8 * P, "overlap")):
        q = torch.randn(1, lq, 4, 16, requires_grad=True)
        k = torch.randn(1, lkv // P, 4, 16, requires_grad=True)
        with lvx_form("gather"):
            lvxattn.cross_attention(q, k, k, comm=comm).sum().backward()
        stats = lvxattn.last_stats()
        assert stats["lvx_form"] == want, (lq, lkv, stats["lvx_form"])
        assert stats["forward"]["steps"] == (2 if want == "overlap" else 1)


@pytest.mark.mpi(min_size=2)
def test_a_bad_lvx_gather_setting_on_one_rank_fails_every_rank():
    comm = WORLD
    q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 5, 2, 8)
    with lvx_form("sideways" if comm.rank == 1 else ""):
        with pytest.raises(lvxattn.InvalidArgumentError, match="rank 1: LVX_LVX_GATHER must be auto, ring"):
            lvxattn.cross_attention(q, k, k, comm=comm)
    lvxattn.cross_attention(q, k, k, comm=comm)  # and the next call runs


@pytest.mark.mpi(min_size=2)
def test_a_bad_gather_size_setting_on_one_rank_fails_every_rank(monkeypatch):
    comm = WORLD
    q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 5, 2, 8)
    if comm.rank == comm.size - 1:
        monkeypatch.setenv("LVX_GATHER_MAX_MB", "lots")
    with pytest.raises(lvxattn.InvalidArgumentError, match=f"rank {comm.size - 1}: LVX_GATHER_MAX_MB must be a number"):
        lvxattn.cross_attention(q, k, k, comm=comm)
    monkeypatch.delenv("LVX_GATHER_MAX_MB", raising=False)
    lvxattn.cross_attention(q, k, k, comm=comm)
