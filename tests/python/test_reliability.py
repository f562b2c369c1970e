"""Reliability: a table of bad inputs (one process, and under MPI with one rank
differing), ranks that disagree, random shapes/splits/masks/algorithms against
the reference (hypothesis), and a soak for memory growth.

Every bad input must raise a specific error quickly on every rank; a hang fails
the test through its timeout.
"""

import gc
import os

import pytest
import torch

import lvxattn
from dist_util import gather_rows, shard, uneven_split
from lvxattn.reference import attention, rel_err

try:
    from mpi4py import MPI
    WORLD = MPI.COMM_WORLD
except ImportError:  # pragma: no cover
    WORLD = None


def good(B=2, Lq=5, Lkv=6, Hq=4, Hkv=2, D=16, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return dict(q=torch.randn(B, Lq, Hq, D, generator=gen).to(dtype),
                k=torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype),
                v=torch.randn(B, Lkv, Hkv, D, generator=gen).to(dtype))


def ranges(B, Lq, pairs):
    return torch.tensor(pairs, dtype=torch.int32).view(1, -1, 2).expand(B, Lq, 2).contiguous()


# (name, expected exception, message pattern, function of the good arguments)
BAD_INPUTS = [
    ("q not a tensor", TypeError, "q must be a torch.Tensor", lambda a: {**a, "q": a["q"].numpy()}),
    ("k not a tensor", TypeError, "k must be a torch.Tensor", lambda a: {**a, "k": [1, 2]}),
    ("float64 q", TypeError, "float32, float16 or bfloat16", lambda a: {**a, "q": a["q"].double()}),
    ("int v", TypeError, "v must be float32", lambda a: {**a, "v": a["v"].int()}),
    ("mixed dtypes", TypeError, "must share a dtype", lambda a: {**a, "k": a["k"].half()}),
    ("3-D q", ValueError, "q must be 4-D", lambda a: {**a, "q": a["q"][0]}),
    ("5-D k", ValueError, "k must be 4-D", lambda a: {**a, "k": a["k"][None]}),
    ("k/v shapes differ", ValueError, "same shape", lambda a: {**a, "v": a["v"][:, :3]}),
    ("batch differs", ValueError, "same batch size", lambda a: {**a, "q": a["q"][:1]}),
    ("head dim differs", ValueError, "same head dim", lambda a: {**a, "q": a["q"][..., :8]}),
    ("Hq not multiple of Hkv", ValueError, "multiple of KV heads", lambda a: {**a, "q": a["q"][:, :, :3]}),
    ("head dim too large", ValueError, "head dim must be in",
     lambda a: {**a, "q": torch.zeros(2, 5, 4, 300), "k": torch.zeros(2, 6, 2, 300), "v": torch.zeros(2, 6, 2, 300)}),
    ("unknown algorithm", ValueError, "algorithm must be one of", lambda a: {**a, "algorithm": "flash"}),
    ("unknown transport", ValueError, "transport must be one of", lambda a: {**a, "transport": "tcp"}),
    ("infinite scale", ValueError, "scale must be finite", lambda a: {**a, "scale": float("inf")}),
    ("nan scale", ValueError, "scale must be finite", lambda a: {**a, "scale": float("nan")}),
    ("string scale", TypeError, "scale must be a number", lambda a: {**a, "scale": "big"}),
    ("float q_ranges", TypeError, "q_ranges must be int32", lambda a: {**a, "q_ranges": torch.zeros(2, 5, 2)}),
    ("q_ranges not a tensor", TypeError, "q_ranges must be a torch.Tensor", lambda a: {**a, "q_ranges": [[0, 1]]}),
    ("q_ranges wrong shape", ValueError, "q_ranges must have shape",
     lambda a: {**a, "q_ranges": torch.zeros(2, 4, 2, dtype=torch.int32)}),
    ("q_ranges begin > end", ValueError, "begin <= end", lambda a: {**a, "q_ranges": ranges(2, 5, [[5, 2]] * 5)}),
    ("q_ranges negative", ValueError, "begin must be >= 0", lambda a: {**a, "q_ranges": ranges(2, 5, [[-1, 2]] * 5)}),
    ("q_ranges past the KV length", ValueError, "exceeds the global KV length",
     lambda a: {**a, "q_ranges": ranges(2, 5, [[0, 99]] * 5)}),
    ("batch zero", ValueError, "batch size must be >= 1",
     lambda a: {**a, "q": a["q"][:0], "k": a["k"][:0], "v": a["v"][:0]}),
    ("ulysses heads not divisible", ValueError, "divisible by the number of ranks",
     lambda a: {**good(Hq=5, Hkv=5), "algorithm": "ulysses"} if WORLD is not None and WORLD.size > 1 else None),
]
SINGLE = [b for b in BAD_INPUTS if b[0] != "ulysses heads not divisible"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,exc,pattern,make", SINGLE, ids=[b[0] for b in SINGLE])
def test_bad_input_single_process(name, exc, pattern, make):
    with pytest.raises(exc, match=pattern):
        lvxattn.cross_attention(**make(good()))


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("name,exc,pattern,make", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_on_one_rank_fails_every_rank(name, exc, pattern, make):
    """The last rank passes the bad input; every rank must raise, none may hang."""
    comm = WORLD
    bad_rank = comm.size - 1
    args = make(good()) if comm.rank == bad_rank or name == "ulysses heads not divisible" else good()
    if name == "q_ranges past the KV length" and comm.rank != bad_rank:
        args["q_ranges"] = ranges(2, 5, [[0, 1]] * 5)  # a range check that needs the global length
    with pytest.raises((exc, lvxattn.InvalidArgumentError, lvxattn.RankMismatchError)) as info:
        lvxattn.cross_attention(**args, comm=comm)
    if comm.rank == bad_rank or name in ("ulysses heads not divisible", "q_ranges past the KV length"):
        assert info.match(pattern)
    else:
        # The others learn which rank was at fault and why.
        assert info.match(f"rank {bad_rank}") and isinstance(info.value, lvxattn.InvalidArgumentError)
    comm.Barrier()
    # The communicator still works afterwards.
    o = lvxattn.cross_attention(**good(), comm=comm)
    assert torch.isfinite(o).all()


DISAGREE = [
    ("batch size (B)", lambda a: good(B=3)),
    ("query heads (Hq)", lambda a: good(Hq=8)),
    ("KV heads (Hkv)", lambda a: good(Hkv=4)),
    ("head dim (D)", lambda a: good(D=32)),
    ("dtype", lambda a: good(dtype=torch.bfloat16)),
    ("algorithm", lambda a: {**a, "algorithm": "ring"}),
    ("scale", lambda a: {**a, "scale": 0.5}),
    ("q_ranges presence", lambda a: {**a, "q_ranges": ranges(2, 5, [[0, 1]] * 5)}),
    ("transport", lambda a: {**a, "transport": "mpi"}),
]


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(30)
@pytest.mark.parametrize("field,make", DISAGREE, ids=[d[0] for d in DISAGREE])
def test_ranks_that_disagree_all_raise_the_same_error(field, make):
    comm = WORLD
    args = make(good()) if comm.rank == 0 else good()
    with pytest.raises(lvxattn.RankMismatchError) as info:
        lvxattn.cross_attention(**args, comm=comm)
    text = str(info.value)
    assert field in text and "rank 0 has" in text and f"rank {comm.size - 1} has" in text
    assert len(set(comm.allgather(text))) == 1  # word for word the same everywhere


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(30)
def test_a_transport_that_cannot_run_fails_every_rank_before_it_is_made():
    """NCCL asked for host tensors: the plan, not the transport's set-up, fails every rank."""
    with pytest.raises(lvxattn.InvalidArgumentError, match="transport 'nccl' moves CUDA tensors; host tensors go over 'mpi'"):
        lvxattn.cross_attention(**good(), comm=WORLD, transport="nccl")
    assert torch.isfinite(lvxattn.cross_attention(**good(), comm=WORLD)).all()


# ---------------------------------------------------------------- properties --

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@st.composite
def problems(draw, max_ranks=1):
    hkv = draw(st.sampled_from([1, 2, 4]))
    group = draw(st.sampled_from([1, 2, 4]))
    return dict(
        B=draw(st.integers(1, 2)), Lq=draw(st.integers(0, 40)), Lkv=draw(st.integers(1, 200)),
        Hkv=hkv, Hq=hkv * group, D=draw(st.sampled_from([8, 16, 24, 64])),
        mask=draw(st.sampled_from([None, "all_previous", "latest"])),
        algorithm=draw(st.sampled_from(["lvx", "ring", "ulysses"])),
        salt=draw(st.integers(0, 3)), zero=draw(st.booleans()),
    )


def check_problem(p, comm):
    P = 1 if comm is None else comm.size
    rank = 0 if comm is None else comm.rank
    if p["algorithm"] == "ulysses" and (p["Hq"] % P or p["Hkv"] % P):
        p = {**p, "algorithm": "lvx"}
    gen = torch.Generator().manual_seed(p["Lq"] * 1000 + p["Lkv"])
    B, Lq, Lkv, Hq, Hkv, D = (p[k] for k in ("B", "Lq", "Lkv", "Hq", "Hkv", "D"))
    q = torch.randn(B, Lq, Hq, D, generator=gen)
    k = torch.randn(B, Lkv, Hkv, D, generator=gen)
    v = torch.randn(B, Lkv, Hkv, D, generator=gen)
    do = torch.randn(B, Lq, Hq, D, generator=gen)
    r = None
    if p["mask"] and Lq:
        r = lvxattn.masks.interleaved_ranges(B, Lq, Lkv, min(3, Lkv), p["mask"])
    lq = uneven_split(Lq, P, 0 if p["zero"] and P > 1 else None, p["salt"])
    lkv = uneven_split(Lkv, P, P - 1 if p["zero"] and P > 1 else None, p["salt"] + 1)
    ql, kl, vl = (shard(t, n, rank).requires_grad_() for t, n in ((q, lq), (k, lkv), (v, lkv)))
    rl = None if r is None else shard(r, lq, rank)
    o = lvxattn.cross_attention(ql, kl, vl, comm=comm, algorithm=p["algorithm"], q_ranges=rl)
    o.backward(shard(do, lq, rank))
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    o_ref, _ = attention(qr, kr, vr, r)
    o_ref.backward(do.double())
    gather = (lambda t, dim=1: t.detach()) if comm is None else (lambda t, dim=1: gather_rows(comm, t, dim))
    for got, want in ((gather(o), o_ref), (gather(ql.grad), qr.grad), (gather(kl.grad), kr.grad),
                      (gather(vl.grad), vr.grad)):
        assert rel_err(got, want) < 1e-4, p


PROPERTY_SETTINGS = dict(max_examples=25, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


@settings(**PROPERTY_SETTINGS)
@given(problems())
def test_property_single_process_matches_reference(p):
    check_problem(p, None)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(300)
@settings(**{**PROPERTY_SETTINGS, "max_examples": 15})
@given(problems())
def test_property_distributed_matches_reference(p):
    # derandomize: every rank draws the same examples in the same order.
    check_problem(p, WORLD)


# --------------------------------------------------------------------- soak --

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(iterations, comm=None):
    args = good(B=1, Lq=16, Lkv=256, Hq=4, Hkv=2, D=32)
    q, k, v = (t.requires_grad_() for t in args.values())
    mask = lvxattn.masks.interleaved_ranges(1, 16, 256 * (comm.size if comm else 1), 4, "latest")
    warm = max(20, iterations // 10)
    for i in range(iterations):
        if i == warm:
            gc.collect()
            start = rss_mb()
        q.grad = k.grad = v.grad = None
        lvxattn.cross_attention(q, k, v, comm=comm, algorithm=("lvx", "ring")[i % 2], q_ranges=mask).sum().backward()
    gc.collect()
    return rss_mb() - start


@pytest.mark.timeout(120)
def test_soak_short_no_memory_growth():
    assert soak(300) < 8.0


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not os.environ.get("LVX_SLOW"), reason="set LVX_SLOW=1 for the 1000-iteration soak")
def test_soak_long_no_memory_growth():
    assert soak(1000) < 8.0


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_soak_distributed_no_memory_growth():
    growth = soak(200, WORLD)
    assert max(WORLD.allgather(growth)) < 8.0


GPU_RANGES = [
    ("q_ranges begin > end", ValueError, "begin <= end in every row \\(10 rows", [[5, 2]] * 5),
    ("q_ranges negative", ValueError, "begin must be >= 0, got -3", [[-3, 2]] * 5),
    ("q_ranges past the KV length", ValueError, "exceeds the global KV length", [[0, 99]] * 5),
]


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not torch.cuda.is_available() or not lvxattn.cuda_built(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,exc,pattern,pairs", GPU_RANGES, ids=[r[0] for r in GPU_RANGES])
def test_bad_device_q_ranges_are_rejected_like_host_ones(name, exc, pattern, pairs):
    """q_ranges in device memory go through the same check (a reduction on the GPU, one read)."""
    dev = torch.device("cuda", torch.cuda.current_device())
    args = {n: t.to(dev, torch.bfloat16) for n, t in good(D=64).items()}
    with pytest.raises(exc, match=pattern):
        lvxattn.cross_attention(**args, q_ranges=ranges(2, 5, pairs).to(dev))
    ok = ranges(2, 5, [[0, 6]] * 5).to(dev)
    assert torch.isfinite(lvxattn.cross_attention(**args, q_ranges=ok).float()).all()


@pytest.mark.gpu
@pytest.mark.timeout(300)
@pytest.mark.skipif(not torch.cuda.is_available() or not lvxattn.cuda_built(), reason="needs a CUDA GPU")
def test_soak_gpu_no_device_memory_growth():
    """1000 forward+backward calls: torch's allocated bytes and the library's cached
    buffers stay flat after warm-up."""
    dev = torch.device("cuda", torch.cuda.current_device())
    args = {n: t.to(dev, torch.bfloat16).requires_grad_() for n, t in good(B=1, Lq=64, Lkv=1024, Hq=8, Hkv=2,
                                                                              D=64).items()}
    ctx = lvxattn.context_for(None, dev)
    for i in range(1000):
        if i == 50:
            torch.cuda.synchronize(dev)
            start, start_buffers = torch.cuda.memory_allocated(dev), ctx.buffer_bytes
        for t in args.values():
            t.grad = None
        lvxattn.cross_attention(**args).float().sum().backward()
    torch.cuda.synchronize(dev)
    assert torch.cuda.memory_allocated(dev) - start < 1 << 20
    assert ctx.buffer_bytes == start_buffers
