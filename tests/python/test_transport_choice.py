"""The planner's transport choice for CUDA buffers, on the CPU over real MPI: every rank's
LVX_MPI_CUDA_AWARE (0, 1, a bad value, unset: what the running MPI says), mixed awareness
(the same error on every rank), NCCL where it cannot run, the cost-based choice among
nccl, mpi-direct and mpi-staged with lvx's form for the transport that runs, and rank 0's
costs deciding, and ranks on different device types failing before any capability query.
Plans come from ``Planner.plan_for`` (the planner of a call described by its sizes: no
tensors, so no GPU is needed) at 2 and 3 ranks (sub-communicators). The expectations follow
what this build offers (``lvxattn.available_transports()``: NCCL or not): plan_for knows no
GPU identity, so where NCCL is built the planner takes it as runnable; the choices that
depend on NCCL are also checked for both kinds of build through ``_core.choose_path`` with
capabilities given explicitly.

Run with: mpirun -n 4 python -m pytest --with-mpi -m mpi tests/python/test_transport_choice.py
"""

import contextlib
import os

import pytest

import lvxattn
from lvxattn import _core
from dist_util import sub_comm

mpi = pytest.importorskip("mpi4py.MPI")
WORLD = mpi.COMM_WORLD
SIZES = [2, 3]


@contextlib.contextmanager
def env(name, value):
    """Sets (value: str) or unsets (None) a variable on this rank for the block."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def plan(comm, transport="auto", algorithm="lvx", cost=None, Lq=64, Lkv=4096, H=8, D=64):
    """The plan of a bf16 call on CUDA buffers with these global sizes (even shards)."""
    planner = _core.Planner(comm_f=int(comm.py2f()))
    P, r = comm.size, comm.rank
    return planner, planner.plan_for(B=1, Lq=Lq * (r + 1) // P - Lq * r // P, Lkv=Lkv * (r + 1) // P - Lkv * r // P,
                                     Hq=H, Hkv=H, D=D, dtype="bfloat16", algorithm=algorithm, device="cuda",
                                     transport=transport, cost=cost)


NCCL = "nccl" in lvxattn.available_transports()


def raised(comm, fn):
    """(exception type name, message) of fn on this rank, and whether every rank raised the same."""
    try:
        fn()
        got = ("", "")
    except (lvxattn.LvxError, ValueError) as e:
        got = (type(e).__name__, str(e))
    return got, len(set(comm.allgather(got))) == 1


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
def test_every_rank_aware_by_the_variable_runs_mpi_direct_with_lvx_gathered(size):
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        with env("LVX_MPI_CUDA_AWARE", "1"):
            # auto: NCCL first where it is built (no link costs to weigh), else mpi-direct
            for asked, want in (("mpi", "mpi-direct"), ("mpi-direct", "mpi-direct"),
                                ("auto", "nccl" if NCCL else "mpi-direct")):
                _, p = plan(comm, asked)
                assert p.transport.label == want, (asked, p.transport.label)
                assert p.lvx_form.label in ("single", "overlap"), asked  # gathered: nothing is staged
            _, p = plan(comm, "mpi-staged")
            assert p.transport.label == "mpi-staged" and p.lvx_form.label == "ring"
            _, p = plan(comm, "mpi", algorithm="ring")
            assert p.transport.label == "mpi-direct" and p.algorithm.label == "ring" and p.lvx_form.label == "ring"
            assert lvxattn.mpi_device_support()["access"] == "yes"


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
def test_mixed_awareness_fails_every_rank_with_one_message(size):
    """Rank 1 says its MPI cannot take CUDA buffers, the others that theirs can: 'mpi',
    'mpi-direct' and 'auto' fail every rank, with NCCL built or not."""
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        with env("LVX_MPI_CUDA_AWARE", "0" if comm.rank == 1 else "1"):
            for asked in ("mpi", "mpi-direct", "auto"):
                (kind, text), same = raised(comm, lambda: plan(comm, asked))
                assert same and kind == "RankMismatchError", (asked, kind, text)
                assert "ranks disagree on whether their MPI takes CUDA buffers" in text
                assert "rank 1 (LVX_MPI_CUDA_AWARE=0)" in text and "rank 0 (LVX_MPI_CUDA_AWARE=1" in text
                assert "mpi-staged" in text and (("'nccl'" in text) == NCCL)  # the ways out
            # Staging needs no awareness: it runs, and the communicator is still usable.
            _, p = plan(comm, "mpi-staged")
            assert p.transport.label == "mpi-staged"
            if NCCL:  # nor does NCCL
                _, p = plan(comm, "nccl")
                assert p.transport.label == "nccl"


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("aware", ["1", "unset"])
def test_ranks_on_different_device_types_fail_before_any_capability_query(size, aware):
    """Rank 0 plans host buffers, the others CUDA buffers (aware by the variable, or left to
    what their MPI says: the evidence path). Every rank raises the same RankMismatchError on
    the device type, no probe runs, and the next plan on the communicator goes through."""
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        planner = _core.Planner(comm_f=int(comm.py2f()))
        device = "cpu" if comm.rank == 0 else "cuda"
        with env("LVX_MPI_CUDA_AWARE", None if aware == "unset" else aware):
            for asked in ("auto", "mpi"):
                (kind, text), same = raised(comm, lambda: planner.plan_for(
                    B=1, Lq=4, Lkv=6, Hq=2, Hkv=2, D=64, dtype="bfloat16", device=device, transport=asked))
                assert same and kind == "RankMismatchError", (asked, kind, text)
                assert "ranks disagree on device type: rank 0 has cpu, rank 1 has cuda" in text
                assert planner.mpi_probe == ""
            p = planner.plan_for(B=1, Lq=4, Lkv=6, Hq=2, Hkv=2, D=64, dtype="bfloat16", device="cpu", transport="mpi")
            assert p.transport.label == "mpi" and p.P == comm.size


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
def test_bad_variable_on_one_rank_fails_every_rank(size):
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        last = comm.size - 1
        with env("LVX_MPI_CUDA_AWARE", "yes" if comm.rank == last else None):
            (kind, text), same = raised(comm, lambda: plan(comm, "mpi"))
        assert same and kind == "InvalidArgumentError"
        assert f"rank {last}: LVX_MPI_CUDA_AWARE must be 0 or 1, got 'yes'" in text
        # The next plan, with the variable gone, goes through (nothing was left half-done).
        with env("LVX_MPI_CUDA_AWARE", "0"):
            _, p = plan(comm, "mpi")
        assert p.transport.label == "mpi-staged"


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
def test_unset_variable_takes_what_the_running_mpi_says(size):
    """Without the variable the MPI's own evidence decides. With no GPU the probe cannot
    confirm any, so the path is staged everywhere; the probe, where it ran, failed the same
    on every rank."""
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        with env("LVX_MPI_CUDA_AWARE", None):
            support = lvxattn.mpi_device_support()
            assert support["access"] in ("none", "evidence") and support["how"]
            planner, p = plan(comm, "mpi")
        assert p.transport.label == "mpi-staged" and p.lvx_form.label == "ring"
        accesses = comm.allgather(support["access"])
        if all(a == "evidence" for a in accesses):
            assert planner.mpi_probe.startswith("failed: ")
            assert len(set(comm.allgather(planner.mpi_probe))) == 1
        else:
            assert planner.mpi_probe == ""
        (kind, text), same = raised(comm, lambda: plan(comm, "mpi-direct"))
        assert same and kind in ("UnsupportedError", "RankMismatchError"), text


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
def test_nccl_runs_where_built_and_fails_every_rank_where_not(size):
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        (kind, text), same = raised(comm, lambda: plan(comm, "nccl"))
        assert same
        if NCCL:
            assert kind == "", text
            assert plan(comm, "nccl")[1].transport.label == "nccl"
        else:
            assert kind == "UnsupportedError" and "no NCCL" in text, text


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("size", SIZES)
def test_calibrated_links_choose_the_transport_and_rank_0_decides(size):
    """Every rank aware: 'mpi' weighs mpi-direct against mpi-staged by their calibrated
    links, and lvx's form follows the transport chosen. Rank 0's costs decide even where
    the other ranks pass the opposite ones."""
    with sub_comm(WORLD, size) as comm:
        if comm is None:
            return
        # NCCL's link is slow in both, so that where it is built auto still weighs it and
        # passes it over (a build without NCCL never has it as a candidate).
        slow_nccl = {"nccl": (1e8, 1e-2)}
        fast_direct = {"mpi-direct": (200e9, 5e-6), "mpi-staged": (10e9, 20e-6), **slow_nccl}
        fast_staged = {"mpi-direct": (1e9, 1e-3), "mpi-staged": (400e9, 1e-6), **slow_nccl}
        with env("LVX_MPI_CUDA_AWARE", "1"):
            for mine, want, forms in ((fast_direct, "mpi-direct", ("single", "overlap")), (fast_staged, "mpi-staged", ("ring",))):
                other = fast_staged if mine is fast_direct else fast_direct
                links = mine if comm.rank == 0 else other
                cost = _core.CostParams(400e12, 100e9, 5e-6, [], links)
                _, p = plan(comm, "mpi", cost=cost, Lq=4096, Lkv=65536, H=16, D=128)
                assert p.transport.label == want and p.lvx_form.label in forms, (want, p.transport, p.lvx_form)
                _, p = plan(comm, "auto", algorithm="auto", cost=cost, Lq=4096, Lkv=65536, H=16, D=128)
                assert p.transport.label == want and p.algorithm.label != "auto"
                assert len(set(comm.allgather((p.transport.label, p.algorithm.label, p.lvx_form.label)))) == 1
            # Without every candidate's link: the order of preference (direct first).
            _, p = plan(comm, "mpi", cost=_core.CostParams(400e12, 100e9, 5e-6, [], {"mpi-staged": (400e9, 1e-6)}))
            assert p.transport.label == "mpi-direct"
            if NCCL:  # and a fast NCCL link wins auto
                cost = _core.CostParams(400e12, 100e9, 5e-6, [], {**fast_direct, "nccl": (900e9, 1e-6)})
                _, p = plan(comm, "auto", cost=cost, Lq=4096, Lkv=65536, H=16, D=128)
                assert p.transport.label == "nccl"


@pytest.mark.mpi(min_size=2)
def test_device_transport_names_for_host_tensors_fail_every_rank():
    import torch
    comm = WORLD
    q, k = torch.randn(1, 3, 2, 16), torch.randn(1, 5, 2, 16)
    for asked in ("mpi-direct", "mpi-staged", "nccl"):
        (kind, text), same = raised(comm, lambda: lvxattn.cross_attention(q, k, k, comm=comm, transport=asked))
        assert same and kind == "InvalidArgumentError" and "moves CUDA tensors" in text, (asked, text)
    o = lvxattn.cross_attention(q, k, k, comm=comm, transport="mpi")
    assert lvxattn.last_stats()["path"] == "mpi" and torch.isfinite(o).all()


def test_transport_names_and_links():
    assert lvxattn.TRANSPORTS == ("auto", "mpi", "nccl", "mpi-staged", "mpi-direct")
    for name in lvxattn.TRANSPORTS:
        assert _core.Transport(name).label == name
    with pytest.raises(lvxattn.InvalidArgumentError, match="transport must be one of"):
        _core.Transport("none")
    assert "mpi" in lvxattn.available_transports()
    assert ("mpi-direct" in lvxattn.available_transports()) == lvxattn.cuda_built()
    cost = _core.CostParams(1e12, 1e9, 1e-5, [], {"nccl": (1e11, 2e-5), "mpi-staged": (1e10, 3e-5)})
    assert cost.links == {"nccl": (1e11, 2e-5), "mpi-staged": (1e10, 3e-5)}
    with pytest.raises(lvxattn.InvalidArgumentError, match="links are for nccl, mpi-direct and mpi-staged"):
        _core.CostParams(1e12, 1e9, 1e-5, [], {"mpi": (1e9, 0.0)})
    with pytest.raises(lvxattn.InvalidArgumentError, match="bytes_per_s > 0"):
        _core.CostParams(1e12, 1e9, 1e-5, [], {"nccl": (0.0, 0.0)})


def test_choose_path_from_capabilities():
    """The choice given every rank's capabilities (no MPI): shared GPUs keep NCCL out of
    auto; evidence that no probe confirmed is not enough for mpi-direct."""
    plan2 = _core.Plan([64, 64], [4096, 4096], Hq=8, Hkv=8, D=64, dtype="bfloat16")
    cost = _core.CostParams(400e12, 100e9, 5e-6)
    own = [dict(nccl=True, mpi_device="yes", gpu=1), dict(nccl=True, mpi_device="yes", gpu=2)]
    shared = [dict(nccl=True, mpi_device="yes", gpu=7), dict(nccl=True, mpi_device="yes", gpu=7)]
    assert _core.choose_path(plan2, "auto", "cuda", own, "lvx", cost)[0].label == "nccl"
    assert _core.choose_path(plan2, "auto", "cuda", shared, "lvx", cost)[0].label == "mpi-direct"
    with pytest.raises(lvxattn.UnsupportedError, match="ranks 0 and 1 share one GPU"):
        _core.choose_path(plan2, "nccl", "cuda", shared, "lvx", cost)
    # Mixed awareness fails 'auto' as 'mpi' and 'mpi-direct', with NCCL everywhere or not;
    # 'nccl' and 'mpi-staged' run.
    for nccl in (True, False):
        mixed = [dict(nccl=nccl, mpi_device="yes", gpu=1, how="aware"), dict(nccl=nccl, mpi_device="none", gpu=2, how="not")]
        for asked in ("auto", "mpi", "mpi-direct"):
            with pytest.raises(lvxattn.RankMismatchError, match=r"yes on rank 0 \(aware\); no on rank 1 \(not\)") as info:
                _core.choose_path(plan2, asked, "cuda", mixed, "lvx", cost)
            assert ("'nccl'" in str(info.value)) == nccl
        assert _core.choose_path(plan2, "mpi-staged", "cuda", mixed, "lvx", cost)[0].label == "mpi-staged"
    assert _core.choose_path(plan2, "nccl", "cuda", [dict(c, nccl=True) for c in mixed], "lvx", cost)[0].label == "nccl"
    # NCCL missing on one rank: 'nccl' fails naming it; auto takes MPI.
    one_without = [dict(nccl=True, mpi_device="yes", gpu=1), dict(nccl=False, mpi_device="yes", gpu=2)]
    with pytest.raises(lvxattn.UnsupportedError, match="no NCCL .* on rank 1"):
        _core.choose_path(plan2, "nccl", "cuda", one_without, "lvx", cost)
    assert _core.choose_path(plan2, "auto", "cuda", one_without, "lvx", cost)[0].label == "mpi-direct"
    unconfirmed = [dict(mpi_device="evidence"), dict(mpi_device="evidence")]
    assert _core.choose_path(plan2, "mpi", "cuda", unconfirmed, "lvx", cost)[0].label == "mpi-staged"
    with pytest.raises(lvxattn.UnsupportedError, match="needs an MPI that takes CUDA buffers"):
        _core.choose_path(plan2, "mpi-direct", "cuda", unconfirmed, "lvx", cost)
