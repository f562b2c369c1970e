"""The cost model behind algorithm="auto" and its calibration.

Without MPI: ``_core.Plan.predict`` for a fixed calibration picks lvx when Lkv·Hkv ≫ Lq·Hq
and ring when Lq·Hq ≫ Lkv·Hkv; its bytes follow DESIGN.md; the calibration is
cached. Under MPI (``mpirun -n 4 python -m pytest --with-mpi -m mpi``): an actual
``cross_attention(algorithm="auto")`` runs what the model picks with rank 0's
parameters, and predicted bytes equal measured bytes exactly for lvx, ring and
ulysses, forward and backward, on uneven shards with and without masks.
"""

from __future__ import annotations

import json

import pytest
import torch

import lvxattn
from lvxattn import _core, calibrate
from dist_util import shard, sub_comm, uneven_split

# A link much slower than the kernel: communication decides.
COMM_BOUND = {"flops_per_s": 1e13, "bytes_per_s": 1e8, "latency_s": 1e-6}


def even(n, P):
    return [n * (r + 1) // P - n * r // P for r in range(P)]


def choice(lq, lkv, Hq, Hkv, D=64, dtype="bfloat16", params=COMM_BOUND):
    """The algorithm with the smallest predicted forward+backward time on the slowest rank."""
    best = {}
    cost = calibrate.cost_params(params)
    for alg in ("lvx", "ring", "ulysses"):
        ts = [_core.Plan(lq, lkv, rank=r, B=1, Hq=Hq, Hkv=Hkv, D=D, dtype=dtype).predict(alg, cost)
              for r in range(len(lq))]
        if all(t["feasible"] for t in ts):
            best[alg] = max(t["forward_s"] + t["backward_s"] for t in ts)
    return min(best, key=best.get), best


@pytest.mark.parametrize("P", [2, 4, 8])
def test_predict_picks_lvx_for_long_visual_inputs_and_ring_for_long_queries(P):
    # Hq, Hkv not divisible by P: ulysses cannot run, the choice is between lvx and ring.
    alg, t = choice(even(1024, P), even(262144, P), 5, 5)
    assert alg == "lvx" and t["ring"] > 10 * t["lvx"], t
    alg, t = choice(even(262144, P), even(1024, P), 5, 5)
    assert alg == "ring" and t["lvx"] > 10 * t["ring"], t
    # GQA counts: Lkv·Hkv vs Lq·Hq, not lengths alone (equal lengths, 8x more query heads).
    alg, t = choice(even(65536, P), even(65536, P), 40, 5)
    assert alg == "ring", t
    # With a link that is never the bottleneck the times meet.
    fast = {"flops_per_s": 1e11, "bytes_per_s": 1e15, "latency_s": 0.0}
    _, t = choice(even(1024, P), even(262144, P), 5, 5, params=fast)
    assert t["ring"] == pytest.approx(t["lvx"], rel=1e-6)


def test_predicted_bytes_follow_the_design_table():
    P, B, Hq, Hkv, D, es = 4, 2, 8, 2, 16, 2
    lq, lkv = [3, 0, 5, 7], [11, 13, 0, 17]
    cost = _core.CostParams(1e11, 1e9, 1e-6)
    for r in range(P):
        blk = lambda rows, t: rows[(r - t) % P]  # noqa: E731 - the block held at step t
        plan = _core.Plan(lq, lkv, rank=r, B=B, Hq=Hq, Hkv=Hkv, D=D, dtype="bfloat16", has_ranges=True)
        lvx, ring = plan.predict("lvx", cost), plan.predict("ring", cost)
        assert lvx["forward_bytes"] == sum(blk(lq, t) * (B * Hq * D * es + 8 * B) for t in range(P - 1)) + \
            sum(blk(lq, t) * 4 * (B * Hq * D + B * Hq) for t in range(P))
        assert ring["forward_bytes"] == sum(blk(lkv, t) * 2 * B * Hkv * D * es for t in range(P - 1))
        assert ring["backward_bytes"] == ring["forward_bytes"] + sum(blk(lkv, t) * 8 * B * Hkv * D for t in range(P))
    assert not _core.Plan(lq, lkv, B=B, Hq=6, Hkv=3, D=D, dtype="bfloat16").predict("ulysses", cost)["feasible"]


def test_step_cost_fit_recovers_known_terms_and_keeps_them_non_negative():
    shapes = [(1024, 16384, 16, 128), (256, 32768, 16, 128), (4096, 4096, 16, 128), (256, 4096, 16, 128),
              (2048, 65536, 16, 128)]
    want = [1 / 230e12, 2e-12, 5e-13, 3e-5]
    rows = [calibrate.features(s, "bwd") for s in shapes]
    got = calibrate.fit_step_costs(rows, [sum(a * b for a, b in zip(r, want)) for r in rows])
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-6)
    # Times that only flops explain (plus noise that would make a term negative): no negative terms.
    times = [r[0] / 200e12 * (1.02 if i % 2 else 0.99) for i, r in enumerate(rows)]
    got = calibrate.fit_step_costs(rows, times)
    assert min(got) >= 0 and got[0] == pytest.approx(1 / 200e12, rel=0.05)


def test_predict_uses_the_calibrated_step_costs():
    """P = 1: the step formula itself; P = 4 lvx, a free link: P steps of the block
    shape, and the per-call part once."""
    fwd, bwd = [1e-12, 3e-12, 1e-12, 1e-5], [2e-12, 5e-12, 2e-12, 2e-5]
    B, Hq, Hkv, D, lq, lkv = 1, 8, 2, 64, 256, 8192

    def step(c, scale, q_rows, kv_rows):
        return c[0] * scale * 4 * B * Hq * q_rows * kv_rows * D + c[1] * B * kv_rows * Hkv * D + \
            c[2] * B * q_rows * Hq * D

    shape = dict(B=B, Hq=Hq, Hkv=Hkv, D=D, dtype="bfloat16")
    one = _core.Plan([lq], [lkv], **shape).predict("lvx", _core.CostParams(1e9, 1e9, 0.0, fwd + bwd))
    assert one["forward_s"] == pytest.approx(step(fwd, 1.0, lq, lkv) + fwd[3])
    assert one["backward_s"] == pytest.approx(step(bwd, 2.5, lq, lkv) + bwd[3])
    four = _core.Plan([lq // 4] * 4, [lkv // 4] * 4, **shape).predict("lvx", _core.CostParams(1e9, 1e30, 0.0, fwd + bwd))
    assert four["forward_s"] == pytest.approx(4 * step(fwd, 1.0, lq // 4, lkv // 4) + fwd[3])
    assert four["backward_s"] == pytest.approx(4 * step(bwd, 2.5, lq // 4, lkv // 4) + bwd[3])
    with pytest.raises(lvxattn.InvalidArgumentError, match="8 numbers"):
        _core.CostParams(1e9, 1e9, 0.0, [1.0])


def test_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LVX_CACHE_DIR", str(tmp_path))
    small = [(32, 256, 2, 16), (8, 256, 2, 16), (32, 64, 2, 16), (8, 64, 2, 16)]
    monkeypatch.setitem(calibrate.KERNEL_SHAPES, "cpu", small)
    params = calibrate.apply(None, "cpu")
    assert params["flops_per_s"] > 1e8 and params["fwd_flops_per_s"] > 1e8 and params["bwd_flops_per_s"] > 1e8
    path = calibrate.cache_path("cpu")
    assert path.startswith(str(tmp_path)) and json.load(open(path))[params["key"]]["flops_per_s"] == params["flops_per_s"]

    def no_measure(*args, **kwargs):
        raise AssertionError("measured again despite the cache")
    monkeypatch.setattr(calibrate, "measure_kernel", no_measure)
    assert calibrate.calibrate(None, "cpu") == params
    # The single-process auto path still runs and reports what it ran.
    q, k = torch.randn(1, 8, 2, 16), torch.randn(1, 64, 2, 16)
    lvxattn.cross_attention(q, k, k, algorithm="auto")
    assert lvxattn.last_stats()["algorithm"] in ("lvx", "ring", "ulysses")


# ---- under MPI ----------------------------------------------------------------------------------------

def _world():
    return pytest.importorskip("mpi4py.MPI").COMM_WORLD


def run_auto(comm, Lq, Lkv, Hq, Hkv, D=16):
    P, r = comm.size, comm.rank
    lq, lkv = even(Lq, P), even(Lkv, P)
    q = torch.randn(1, lq[r], Hq, D, requires_grad=True)
    k = torch.randn(1, lkv[r], Hkv, D, requires_grad=True)
    v = torch.randn(1, lkv[r], Hkv, D, requires_grad=True)
    lvxattn.cross_attention(q, k, v, comm=comm, algorithm="auto").sum().backward()
    stats = lvxattn.last_stats()
    want, _ = choice(lq, lkv, Hq, Hkv, D, "float32", params=COMM_BOUND)
    return stats["algorithm"], want


@pytest.mark.mpi(min_size=2)
def test_auto_runs_what_the_model_picks_with_rank0s_calibration():
    comm = _world()
    P = comm.size
    # Only rank 0's parameters count: the others hold the opposite regime.
    mine = COMM_BOUND if comm.rank == 0 else {"flops_per_s": 1e6, "bytes_per_s": 1e15, "latency_s": 0.0}
    calibrate.set_cost_params(comm, "cpu", "auto", mine)
    ran, want = run_auto(comm, 2 * P, 512 * P, 5, 5)
    assert ran == want == "lvx"
    ran, want = run_auto(comm, 512 * P, 2 * P, 5, 5)
    assert ran == want == "ring"
    ran, want = run_auto(comm, 128 * P, 128 * P, 10, 5)  # Lq·Hq = 2·Lkv·Hkv
    assert ran == want == "ring"


@pytest.mark.mpi(min_size=2)
def test_apply_calibrates_collectively_and_every_rank_agrees(tmp_path_factory, monkeypatch):
    comm = _world()
    cache = comm.bcast(str(tmp_path_factory.mktemp("cal")) if comm.rank == 0 else None, root=0)
    monkeypatch.setenv("LVX_CACHE_DIR", cache)
    monkeypatch.setitem(calibrate.KERNEL_SHAPES, "cpu", [(32, 512, 2, 16), (8, 512, 2, 16), (32, 64, 2, 16)])
    params = calibrate.apply(comm, "cpu")
    assert comm.allgather(params) == [params] * comm.size
    assert params["flops_per_s"] > 1e8 and params["bytes_per_s"] > 1e6 and 0 < params["latency_s"] < 1e-2
    run_auto(comm, 4 * comm.size, 64 * comm.size, 4, 4)  # auto runs with the measured parameters
    comm.Barrier()


BYTE_CASES = [
    # B, Lq, Lkv, Hq, Hkv, D, dtype, masked
    (1, 29, 190, 12, 12, 8, torch.float32, False),
    (2, 23, 150, 24, 12, 8, torch.bfloat16, True),
    (1, 17, 333, 12, 4, 16, torch.float16, True),
]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", BYTE_CASES, ids=["fp32", "bf16-gqa-masked", "fp16-gqa-masked"])
def test_predicted_bytes_equal_measured_bytes_for_every_algorithm(case):
    B, Lq, Lkv, Hq, Hkv, D, dtype, masked = case
    world = _world()
    for P in range(2, world.size + 1):
        with sub_comm(world, P) as comm:
            if comm is None:
                continue
            r = comm.rank
            lq, lkv = uneven_split(Lq, P, None, P), uneven_split(Lkv, P, 0 if P > 2 else None, P + 1)
            for alg in ("lvx", "ring", "ulysses"):
                if alg == "ulysses" and (Hq % P or Hkv % P):
                    continue
                gen = torch.Generator().manual_seed(P)
                q = torch.randn(B, lq[r], Hq, D, generator=gen).to(dtype).requires_grad_()
                k = torch.randn(B, lkv[r], Hkv, D, generator=gen).to(dtype).requires_grad_()
                v = torch.randn(B, lkv[r], Hkv, D, generator=gen).to(dtype).requires_grad_()
                ranges = None
                if masked:
                    ranges = shard(lvxattn.masks.interleaved_ranges(B, Lq, Lkv, num_images=3, style="all_previous"),
                                   lq, r)
                lvxattn.cross_attention(q, k, v, comm=comm, algorithm=alg, q_ranges=ranges).sum().backward()
                stats = lvxattn.last_stats()
                plan = _core.Plan(lq, lkv, rank=r, B=B, Hq=Hq, Hkv=Hkv, D=D, dtype=str(dtype).split(".")[1],
                                  has_ranges=masked, lvx_form=stats["lvx_form"] or "ring")
                pred = plan.predict(alg, _core.CostParams(1e11, 1e9, 1e-6))
                assert stats["algorithm"] == alg
                assert stats["forward"]["bytes_sent"] == pred["forward_bytes"], (alg, P, r, "forward")
                assert stats["backward"]["bytes_sent"] == pred["backward_bytes"], (alg, P, r, "backward")
