"""The CUDA backend's side of test_masked_values.py: NaN and ±Inf in K, in V, and in
Q/dO of rows that see nothing leave every output and gradient equal to the float64
reference computed over each row's visible KV rows only (a NaN a row can see still
gives that row NaN), for bf16, fp16 and fp32, GQA, KV rows no row sees at the head,
in gaps and past the last visible row (the tail of a tile), KV rows only some rows of
a tile see, split-KV, and for lvx, ring and ulysses at 1, 2 and 3 ranks (ranks share
the GPU through host-staged MPI). Rows with empty intervals get O = 0, LSE = -inf and
exactly zero gradients; KV rows no row sees get exactly zero dK, dV.

On Hopper the 16-bit D = 64, 96 and 128 cases run the sm_90a kernels; run the file
again with LVX_CUDA_SM90=0 for the mma.sync ones:
  python -m pytest -m gpu tests/python/test_gpu_masked_values.py
  mpirun -n 3 python -m pytest --with-mpi -m "mpi and gpu" tests/python/test_gpu_masked_values.py
"""

import itertools
import math

import pytest
import torch

lvxattn = pytest.importorskip("lvxattn")
import masked_inputs  # noqa: E402
from dist_util import sub_comm, uneven_split  # noqa: E402
from masked_inputs import check_results, kv_splits, layout, make_problem, reference_with_grads  # noqa: E402
from cases import TOL as CPU_TOL  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not lvxattn.cuda_built(), reason="built without the CUDA backend"),
]

WHERE = ["v_hidden", "k_hidden", "v_partial", "k_partial", "q_empty"]
POISON = ["nan", "inf", "-inf"]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# Several tiles of every kernel (sm_90a: 128 query rows x 128 KV rows forward; backward
# 64 (D = 96, 128) or 128 (D = 64) query rows x 128 KV rows; mma.sync: 128 x 64, 64 x
# 128), lengths that are no multiple of them, GQA; the distributed shape's heads are
# divisible by 1, 2 and 3 (ulysses). D = 96 takes the 64-byte-swizzle tiles of the sm_90a
# kernels.
SHAPE = dict(B=2, Lq=150, Lkv=700, Hq=6, Hkv=3, D=128)
SHAPE_DIST = dict(B=2, Lq=150, Lkv=700, Hq=12, Hkv=6, D=128)  # heads divisible by 1, 2, 3 (ulysses)
SHAPE_D64 = dict(B=2, Lq=77, Lkv=300, Hq=4, Hkv=2, D=64)
SHAPES_OTHER_D = {64: dict(B=2, Lq=300, Lkv=700, Hq=4, Hkv=2, D=64), 96: dict(B=2, Lq=150, Lkv=700, Hq=4, Hkv=1, D=96)}
GPU_TOL = {torch.bfloat16: 2e-2, torch.float16: 8e-3, torch.float32: 1e-4}


def device():
    return lvxattn.devices.pick_device("cuda")


def check(got, ref, dtype, ranges, label, hidden=None):
    """Every result against the reference (NaN/±Inf exactly where it has them); exact
    zeros where nothing is seen (`hidden`: KV rows no row sees, by default the layout's)."""
    tol = max(CPU_TOL[dtype] * 2, GPU_TOL[dtype])
    check_results(got, ref, ranges, label, tol, tol / 4, hidden)


def reference(problem):
    """The float64 reference (masked_inputs.attention_visible) by torch on the GPU."""
    return reference_with_grads(*problem[:4], problem[4], device=device())


def run_one_process(problem, dev):
    q, k, v, do, ranges = (t.to(dev) for t in problem)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o, lse = lvxattn.cross_attention_forward(qg, kg, vg, q_ranges=ranges)
    o.backward(do)
    torch.cuda.synchronize(dev)
    return {"o": o, "lse": lse, "dq": qg.grad, "dk": kg.grad, "dv": vg.grad}


# ---- one process ---------------------------------------------------------------

@pytest.mark.parametrize("dtype,D", [(torch.float32, 32), (torch.bfloat16, 128), (torch.float16, 64)], ids=str)
@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize("poison", POISON)
def test_issue_input(tensor, poison, dtype, D):
    """The issue's problem (B=1, Lq=4, Lkv=10, one head; every row sees [5, 10); rows
    0-4 of K or V poisoned) at the head dims the GPU has."""
    gen = torch.Generator().manual_seed(3)
    q, k, v, do = (torch.randn(1, n, 1, D, generator=gen).to(dtype) for n in (4, 10, 10, 4))
    (k if tensor == "k" else v)[:, :5] = float(poison)
    ranges = torch.tensor([[[5, 10]] * 4], dtype=torch.int32)
    got = run_one_process((q, k, v, do, ranges), device())
    ref = reference((q, k, v, do, ranges))
    for want in ref.values():
        assert torch.isfinite(want).all()
    check(got, ref, dtype, ranges, f"{tensor} {poison}", hidden=list(range(5)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("side", ["head", "tail"])
def test_rows_sharing_an_edge_over_many_tiles(side, dtype):
    """Every row sees the same half of 1000 KV rows; the other half (before: not loaded;
    after: the rest of the last tile and past it) is NaN in K and V."""
    gen = torch.Generator().manual_seed(11)
    B, Lq, Lkv, Hq, Hkv, D = 1, 300, 1000, 4, 2, 128
    q, do = ((0.5 * torch.randn(B, Lq, Hq, D, generator=gen)).to(dtype) for _ in range(2))
    k, v = ((0.5 * torch.randn(B, Lkv, Hkv, D, generator=gen)).to(dtype) for _ in range(2))
    seen = (500, 1000) if side == "head" else (0, 500)
    hidden = list(range(0, 500)) if side == "head" else list(range(500, 1000))
    k[:, hidden] = math.nan
    v[:, hidden] = math.inf
    ranges = torch.tensor([[list(seen)] * Lq], dtype=torch.int32)
    got = run_one_process((q, k, v, do, ranges), device())
    check(got, reference((q, k, v, do, ranges)), dtype, ranges, side, hidden=hidden)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where,poison", list(itertools.product(WHERE, POISON)))
def test_one_process(where, poison, dtype):
    problem = make_problem(**SHAPE, dtype=dtype, where=where, poison=poison, seed=len(where))
    got = run_one_process(problem, device())
    check(got, reference(problem), dtype, problem[4], f"{where} {poison}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", WHERE)
def test_one_process_head_dim_64(where, dtype):
    problem = make_problem(**SHAPE_D64, dtype=dtype, where=where, poison=POISON[len(where) % 3], seed=5)
    got = run_one_process(problem, device())
    check(got, reference(problem), dtype, problem[4], where)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("D", [64, 96])
def test_one_process_head_dims_many_tiles(D, where, dtype):
    problem = make_problem(**SHAPES_OTHER_D[D], dtype=dtype, where=where, poison=POISON[(len(where) + D) % 3], seed=D)
    got = run_one_process(problem, device())
    check(got, reference(problem), dtype, problem[4], f"D={D} {where}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where", ["v_hidden", "v_partial", "k_partial"])
@pytest.mark.parametrize("D", [64, 96, 128])
def test_split_kv(where, dtype, D):
    """A short query block over a long KV block: the forward splits the KV rows over
    thread blocks and merges them (NaN LSE of a split included)."""
    shape = dict(B=1, Lq=40, Lkv=4100, Hq=2, Hkv=1, D=D)
    problem = make_problem(**shape, dtype=dtype, where=where, poison=POISON[len(where) % 3], seed=9)
    got = run_one_process(problem, device())
    check(got, reference(problem), dtype, problem[4], where)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 96, 128])
@pytest.mark.parametrize("tensor", ["k", "v", "q", "do"])
def test_latest_image_beside_rows_that_see_none_of_it(tensor, D, dtype):
    """The 'latest' mask over many KV tiles: query tiles hold the rows of two images, so
    most KV tiles are seen whole by some rows of a tile and not at all by the others
    (the forward's V scan and the backward's K scan and Q/dO zeroing, over a pipeline of
    several stages). NaN/±Inf in two K or V rows inside image 2 (mid-tile, and its last
    row), or in Q or dO of a row that sees image 2, reach only what image 2 reaches."""
    B, Lq, Lkv, Hq, Hkv = 1, 300, 2600, 2, 1
    gen = torch.Generator().manual_seed(D)
    q, do = ((0.5 * torch.randn(B, Lq, Hq, D, generator=gen)).to(dtype) for _ in range(2))
    k, v = ((0.5 * torch.randn(B, Lkv, Hkv, D, generator=gen)).to(dtype) for _ in range(2))
    ranges = lvxattn.masks.interleaved_ranges(B, Lq, Lkv, 5, "latest")
    bounds = lvxattn.masks.image_bounds(Lkv, 5)
    x = [math.nan, math.inf, -math.inf][(D // 32 + len(tensor)) % 3]
    if tensor in ("k", "v"):
        (k if tensor == "k" else v)[:, [int(bounds[1]) + 300, int(bounds[2]) - 1]] = x
    else:
        sees2 = ((ranges[0, :, 0] == bounds[1]) & (ranges[0, :, 1] == bounds[2])).nonzero().flatten()
        (q if tensor == "q" else do)[:, int(sees2[len(sees2) // 2])] = x
    got = run_one_process((q, k, v, do, ranges), device())
    ref = reference((q, k, v, do, ranges))
    assert not torch.isfinite(ref["o"]).all() or tensor == "do"  # the poison reaches image 2's rows
    check(got, ref, dtype, ranges, f"latest {tensor}", hidden=[])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D", [64, 96, 128])
@pytest.mark.parametrize("tensor", ["k", "v", "q", "do"])
def test_random_intervals_over_many_tiles(tensor, D, dtype):
    """Random intervals (experiments/bench_ab.py's 'random' mask) over many KV tiles:
    nearly every query tile has rows that see a KV tile whole, rows that see none of it
    and rows whose interval edge lies inside it, so every backward tile is masked and its
    Q/dO rows fixed. Every seventh row sees nothing; no row sees the last 100 KV rows.
    NaN/±Inf in K and V of those last rows, and in the named tensor: two K or V rows that
    some rows see, or Q/dO of a row that sees part of the KV rows and of a row that sees
    nothing. GQA, B = 2, odd query and KV tile counts."""
    B, Lq, Lkv, Hq, Hkv = 2, 300, 2600, 4, 2
    gen = torch.Generator().manual_seed(D + len(tensor))
    q, do = ((0.5 * torch.randn(B, Lq, Hq, D, generator=gen)).to(dtype) for _ in range(2))
    k, v = ((0.5 * torch.randn(B, Lkv, Hkv, D, generator=gen)).to(dtype) for _ in range(2))
    uv = torch.randint(0, Lkv - 100 + 1, (B, Lq, 2), generator=gen)
    ranges = torch.stack([uv.min(dim=-1).values, uv.max(dim=-1).values], dim=-1).to(torch.int32)
    ranges[:, ::7, 1] = ranges[:, ::7, 0]
    hidden = list(range(Lkv - 100, Lkv))
    x = [math.nan, math.inf, -math.inf][(D // 32 + len(tensor)) % 3]
    k[:, hidden] = x
    v[:, hidden] = x
    if tensor in ("k", "v"):
        (k if tensor == "k" else v)[:, [1000, 1777]] = x
    else:
        row = 1 if ranges[0, 1, 1] > ranges[0, 1, 0] else 2  # sees part of the KV rows
        (q if tensor == "q" else do)[:, [0, row]] = x  # row 0 sees nothing
    got = run_one_process((q, k, v, do, ranges), device())
    ref = reference((q, k, v, do, ranges))
    assert not torch.isfinite(ref["dk"]).all() or tensor == "do"  # the poison reaches what sees it
    check(got, ref, dtype, ranges, f"random {tensor}", hidden=hidden)


def test_a_visible_nan_still_reaches_the_rows_that_see_it():
    """The partial case is not vacuous: rows of kinds 1 and 2 see the poisoned row."""
    q, k, v, do, ranges = make_problem(**SHAPE, dtype=torch.bfloat16, where="v_partial", poison="nan")
    dev = device()
    o = lvxattn.cross_attention(q.to(dev), k.to(dev), v.to(dev), q_ranges=ranges.to(dev)).cpu()
    seen = layout(SHAPE["Lkv"])["i2"] - 1
    sees = (ranges[..., 0] <= seen) & (seen < ranges[..., 1])  # [B, Lq]
    assert sees.any() and (~sees).any()
    assert torch.isnan(o[sees]).all()
    assert torch.isfinite(o[~sees]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_with_nan_lse_leave_the_rows_they_cannot_see_alone(dtype):
    """Every row sees KV row 0, whose K is NaN, so every LSE is NaN; the rows see
    different prefixes, and the KV rows none of them sees keep exactly zero dK, dV."""
    gen = torch.Generator().manual_seed(5)
    q, do = (torch.randn(1, 90, 4, 64, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(1, 300, 2, 64, generator=gen).to(dtype) for _ in range(2))
    k[:, 0] = math.nan
    ranges = torch.tensor([[[0, 100 + i % 30] for i in range(90)]], dtype=torch.int32)
    got = run_one_process((q, k, v, do, ranges), device())
    check(got, reference((q, k, v, do, ranges)), dtype, ranges, "nan lse", hidden=list(range(130, 300)))


# ---- under MPI -----------------------------------------------------------------

mpi = pytest.importorskip("mpi4py.MPI")
WORLD = mpi.COMM_WORLD


def run_distributed(comm, algorithm, problem, lq, lkv):
    """masked_inputs.run_distributed on this rank's GPU over host-staged MPI (ranks may share a GPU)."""
    return masked_inputs.run_distributed(comm, algorithm, problem, lq, lkv, device=device(), transport="mpi")


ALGORITHMS = ["lvx", "lvx/overlap", "ring", "ulysses"]
# Every algorithm with every placement; dtype and poison value cycle through the cases.
CASES = [(a, w, DTYPES[n % 3], POISON[(n // 3 + n) % 3])
         for n, (a, w) in enumerate(itertools.product(ALGORITHMS, WHERE))]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("tensor", ["k", "v"])
def test_issue_input_does_not_depend_on_the_split(tensor):
    """The issue's problem (D = 32 on the GPU) on two ranks with KV splits [4, 6] and [5, 5]."""
    with sub_comm(WORLD, 2) as comm:
        if comm is None:
            return
        gen = torch.Generator().manual_seed(3)
        q, k, v, do = (torch.randn(1, n, 1, 32, generator=gen) for n in (4, 10, 10, 4))
        (k if tensor == "k" else v)[:, :5] = math.nan
        ranges = torch.tensor([[[5, 10]] * 4], dtype=torch.int32)
        for dtype in (torch.float32, torch.bfloat16):
            problem = tuple(t.to(dtype) for t in (q, k, v, do)) + (ranges,)
            ref = reference(problem)
            for algorithm in ("lvx", "lvx/overlap", "ring"):  # one head: no ulysses at P = 2
                for lkv in ([4, 6], [5, 5]):
                    got = run_distributed(comm, algorithm, problem, [2, 2], lkv)
                    check(got, ref, dtype, ranges, f"{algorithm} {dtype} split {lkv}", hidden=list(range(5)))


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{w}-{p}-{str(d)[6:]}" for a, w, d, p in CASES])
def test_every_algorithm_rank_count_and_split(case):
    algorithm, where, dtype, poison = case
    problem = make_problem(**SHAPE_DIST, dtype=dtype, where=where, poison=poison, seed=7)
    ranges = problem[4]
    ref = reference(problem)
    for P in range(1, min(WORLD.size, 3) + 1):
        with sub_comm(WORLD, P) as comm:
            if comm is None:
                continue
            for n, lkv in enumerate(kv_splits(SHAPE_DIST["Lkv"], P)):
                lq = uneven_split(SHAPE_DIST["Lq"], P, 0 if n else None, n)
                got = run_distributed(comm, algorithm, problem, lq, lkv)
                check(got, ref, dtype, ranges, f"{algorithm} P={P} lq={lq} lkv={lkv}")
