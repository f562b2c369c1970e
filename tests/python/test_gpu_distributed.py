"""lvx, ring and ulysses on GPUs under MPI, for every transport, against the
float64 reference: bf16 and fp16, GQA, both MLLM mask styles, uneven shards with
a rank that owns no query rows and one that owns no KV rows. Ranks may share one GPU
(then NCCL, which refuses that, is skipped); mpi-direct runs where every rank's MPI
takes CUDA buffers (lvxattn.mpi_device_support), and is skipped otherwise, naming why.

Run on a machine with N GPUs: mpirun -n N python -m pytest --with-mpi -m "mpi and gpu" tests/python/test_gpu_distributed.py
(one transport: -k mpi-direct, -k mpi-staged, -k nccl; a CUDA-aware MPI from wheels:
tools/cuda_aware_mpi.sh).
"""

import contextlib
import os

import pytest
import torch

import lvxattn
from dist_util import errors_against_reference, lvx_form, shard, uneven_split
from lvxattn import devices
from lvxattn.reference import rel_err

mpi = pytest.importorskip("mpi4py.MPI")
WORLD = mpi.COMM_WORLD

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 1, reason="needs CUDA GPUs"),
    pytest.mark.skipif(not lvxattn.cuda_built(), reason="lvxattn built without CUDA"),
]

TOL = {torch.bfloat16: 2e-2, torch.float16: 8e-3}


def local_device():
    return devices.pick_device("cuda", WORLD)


def gpus_shared(comm) -> bool:
    """Whether two ranks of comm drive one GPU."""
    props = torch.cuda.get_device_properties(local_device())
    ident = str(getattr(props, "uuid", "")) or f"{os.uname().nodename}:{local_device().index}"
    return len(set(comm.allgather(ident))) < comm.size


def mpi_takes_cuda_buffers(comm):
    """(whether every rank's MPI says it takes CUDA buffers, what rank 0's says)."""
    support = lvxattn.mpi_device_support()
    every = all(comm.allgather(support["access"] != "none"))
    return every, support["how"]


# algorithm[/lvx form], dtype, B, Lq, Lkv, Hq, Hkv, D, mask, zero ranks
PROBLEMS = [
    ("lvx", torch.bfloat16, 1, 300, 4000, 16, 4, 128, "all_previous", False),
    ("lvx", torch.float16, 2, 130, 1500, 8, 8, 64, "latest", True),
    ("lvx", torch.bfloat16, 1, 300, 4000, 16, 4, 128, "latest", True),
    ("lvx", torch.float16, 2, 130, 1500, 8, 2, 64, None, False),
    ("lvx/ring", torch.bfloat16, 2, 300, 4000, 16, 4, 128, "all_previous", True),
    ("lvx/overlap", torch.float16, 2, 130, 1500, 8, 2, 64, "latest", True),
    ("lvx/single", torch.float16, 2, 130, 1500, 8, 2, 64, None, True),
    ("ring", torch.bfloat16, 1, 300, 4000, 16, 4, 128, "all_previous", True),
    ("ring", torch.float16, 2, 130, 1500, 8, 2, 64, None, False),
    ("ring", torch.float16, 1, 300, 4000, 16, 4, 128, "latest", False),
    ("ulysses", torch.bfloat16, 1, 300, 2048, 12, 6, 128, "all_previous", False),
    ("ulysses", torch.float16, 2, 130, 1500, 12, 6, 64, "latest", True),
]
# Every problem over mpi-direct; the ones each of the other transports always ran over.
CASES = ([(a, "mpi-direct", *rest) for a, *rest in PROBLEMS] +
         [(a, "nccl", *rest) for i, (a, *rest) in enumerate(PROBLEMS) if i in (0, 1, 4, 6, 7, 8, 10)] +
         [(a, "mpi", *rest) for i, (a, *rest) in enumerate(PROBLEMS) if i in (2, 3, 5, 9, 11)] +
         [(a, "mpi-staged", *rest) for i, (a, *rest) in enumerate(PROBLEMS) if i in (0, 4, 5, 7, 11)])


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", CASES, ids=["-".join(str(x).replace("torch.", "") for x in c[:3]) for c in CASES])
def test_gpu_algorithms_and_transports_match_reference(case):
    requested, transport, dtype, B, Lq, Lkv, Hq, Hkv, D, mask, zeros = case
    algorithm, _, form = requested.partition("/")  # lvx/ring, lvx/gather: force lvx's form
    comm, P, rank = WORLD, WORLD.size, WORLD.rank
    if algorithm == "ulysses" and (Hq % P or Hkv % P):
        pytest.skip("heads not divisible by P")
    if transport == "nccl" and P > 1 and "nccl" not in lvxattn.available_transports():
        pytest.skip("built without NCCL")
    if transport == "nccl" and P > 1 and gpus_shared(comm):
        pytest.skip("ranks share a GPU (NCCL refuses that)")
    if transport == "mpi-direct" and P > 1:
        every, how = mpi_takes_cuda_buffers(comm)
        if not every:
            pytest.skip(f"MPI does not take CUDA buffers on every rank ({how})")
    dev = local_device()
    gen = torch.Generator().manual_seed(len(algorithm) * 100 + Lq)
    q = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
    k = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype)
    v = torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype)
    do = torch.randn(B, Lq, Hq, D, generator=gen).to(dtype)
    ranges = None if mask is None else lvxattn.masks.interleaved_ranges(B, Lq, Lkv, 5, mask)
    lq = uneven_split(Lq, P, 0 if zeros and P > 1 else None, 1)
    lkv = uneven_split(Lkv, P, P - 1 if zeros and P > 1 else None, 2)

    ql = shard(q, lq, rank).to(dev).requires_grad_()
    kl = shard(k, lkv, rank).to(dev).requires_grad_()
    vl = shard(v, lkv, rank).to(dev).requires_grad_()
    rl = None if ranges is None else shard(ranges, lq, rank).to(dev)
    with lvx_form(form):
        o, lse = lvxattn.cross_attention_forward(ql, kl, vl, comm=comm, algorithm=algorithm, q_ranges=rl,
                                                 transport=transport)
        o.backward(shard(do, lq, rank).to(dev))
    torch.cuda.synchronize(dev)
    stats = lvxattn.last_stats()
    if P > 1:
        assert stats["path"].startswith(transport) and stats["transport"].startswith(transport[:3])
        if transport == "mpi-direct":
            assert stats["transport"] == "mpi (CUDA-aware)"
        if algorithm == "lvx":  # auto gathers where the path moves device memory, not through host staging
            direct = stats["path"] in ("nccl", "mpi-direct")
            assert stats["lvx_gather"] == (form in ("gather", "overlap", "single") or (not form and direct))
            assert not form or form == "gather" or stats["lvx_form"] == form

    tol = TOL[dtype]
    errs = errors_against_reference(comm, (q, k, v, do), ranges, o, lse, (ql, kl, vl))
    bad = {n: e for n, e in errs.items() if not e < (tol / 4 if n == "lse" else tol)}
    assert not bad, f"{case} P={P}: {errs}"


@pytest.mark.mpi(min_size=2)
def test_gpu_matches_cpu_backend_bitwise_close():
    """The same distributed call on CPU tensors and on GPU tensors agrees."""
    comm, P, rank = WORLD, WORLD.size, WORLD.rank
    dev = local_device()
    gen = torch.Generator().manual_seed(77)
    q = torch.randn(1, 16 * P, 8, 64, generator=gen).to(torch.bfloat16)
    k = torch.randn(1, 500 * P, 2, 64, generator=gen).to(torch.bfloat16)
    v = torch.randn(1, 500 * P, 2, 64, generator=gen).to(torch.bfloat16)
    lq, lkv = [16] * P, [500] * P
    parts = [shard(t, n, rank) for t, n in ((q, lq), (k, lkv), (v, lkv))]
    o_cpu = lvxattn.cross_attention(*parts, comm=comm)
    o_gpu = lvxattn.cross_attention(*(t.to(dev) for t in parts), comm=comm).cpu()
    assert rel_err(o_gpu, o_cpu.double()) < 1e-2


@pytest.mark.mpi(min_size=2)
def test_ranks_on_different_device_types_all_fail_before_any_transport():
    """Rank 0 passes CPU tensors, the others GPU tensors: one plan's allgather fails every
    rank with the same message (no transport is made, so none waits in its set-up)."""
    comm, rank = WORLD, WORLD.rank
    dev = torch.device("cpu") if rank == 0 else local_device()
    q, k = torch.randn(1, 4, 2, 64).to(dev, torch.bfloat16), torch.randn(1, 6, 2, 64).to(dev, torch.bfloat16)
    with pytest.raises(lvxattn.RankMismatchError) as info:
        lvxattn.cross_attention(q, k, k, comm=comm)
    assert "device type" in str(info.value) and "rank 0 has cpu" in str(info.value)
    assert len(set(comm.allgather(str(info.value)))) == 1
    dev = local_device()  # and the next call runs (over MPI: ranks may share one GPU)
    assert torch.isfinite(lvxattn.cross_attention(q.to(dev), k.to(dev), k.to(dev), comm=comm, transport="mpi").float()).all()


@contextlib.contextmanager
def cuda_aware(value):
    """LVX_MPI_CUDA_AWARE on this rank for the block (None: unset)."""
    before = os.environ.get("LVX_MPI_CUDA_AWARE")
    if value is None:
        os.environ.pop("LVX_MPI_CUDA_AWARE", None)
    else:
        os.environ["LVX_MPI_CUDA_AWARE"] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LVX_MPI_CUDA_AWARE", None)
        else:
            os.environ["LVX_MPI_CUDA_AWARE"] = before


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("others", ["1", "unset"])
def test_mixed_cuda_awareness_fails_every_rank_then_staging_runs(others):
    """Rank 1 forced unaware (LVX_MPI_CUDA_AWARE=0); the others forced aware, or left to
    what their MPI says (where it says nothing the ranks agree and nothing is mixed). Every
    rank raises the same RankMismatchError before any transfer, for 'mpi', 'mpi-direct' and
    'auto' (NCCL built or not); then 'mpi-staged' runs and matches the CPU."""
    comm, rank = WORLD, WORLD.rank
    dev = local_device()
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 8, 4, 64, generator=gen).to(torch.bfloat16)
    k = torch.randn(1, 40, 4, 64, generator=gen).to(torch.bfloat16)
    setting = "0" if rank == 1 else (None if others == "unset" else others)
    with cuda_aware(setting):
        access = lvxattn.mpi_device_support()["access"]
        mixed = len(set(comm.allgather(access != "none"))) > 1
        for transport in ("mpi", "mpi-direct", "auto"):
            try:
                lvxattn.cross_attention(q.to(dev), k.to(dev), k.to(dev), comm=comm, transport=transport)
                got = ("", "")
            except lvxattn.LvxError as e:
                got = (type(e).__name__, str(e))
            assert len(set(comm.allgather(got))) == 1, (transport, got)  # the same on every rank
            if mixed:
                assert got[0] == "RankMismatchError" and "rank 1 (LVX_MPI_CUDA_AWARE=0)" in got[1], (transport, got)
            elif transport == "mpi-direct":
                assert got[0] == "UnsupportedError", got
        o = lvxattn.cross_attention(q.to(dev), k.to(dev), k.to(dev), comm=comm, transport="mpi-staged")
        assert lvxattn.last_stats()["path"] == "mpi-staged"
    if others == "1":
        assert mixed
    o_cpu = lvxattn.cross_attention(q, k, k, comm=comm)
    assert rel_err(o.cpu(), o_cpu.double()) < 1e-2


@pytest.mark.mpi(min_size=2)
def test_mpi_probe_confirms_the_evidence_once():
    """Where every rank's MPI says it takes CUDA buffers (not forced by the variable), the
    first plan that may use them probes device-buffer transfers once, every rank agreeing,
    and 'mpi' then runs mpi-direct."""
    comm = WORLD
    with cuda_aware(None):
        if not all(comm.allgather(lvxattn.mpi_device_support()["access"] == "evidence")):
            pytest.skip(f"MPI gives no evidence of CUDA support ({lvxattn.mpi_device_support()['how']})")
        dev = local_device()
        sub = comm.Dup()  # a communicator whose planner has not probed yet
        try:
            assert lvxattn.mpi_device_support(sub)["probe"] == ""
            q = torch.randn(1, 8, 4, 64, device=dev, dtype=torch.float16)
            k = torch.randn(1, 40, 4, 64, device=dev, dtype=torch.float16)
            lvxattn.cross_attention(q, k, k, comm=sub, transport="mpi")
            probe = lvxattn.mpi_device_support(sub)["probe"]
            assert len(set(comm.allgather(probe))) == 1
            assert probe == "passed", probe
            assert lvxattn.last_stats()["path"] == "mpi-direct"
        finally:
            sub.Free()

