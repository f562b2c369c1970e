"""Values outside a row's visible KV interval never reach a result: NaN and ±Inf in
K, in V, and in Q/dO of rows that see nothing leave every output and gradient equal
to the float64 reference computed over each row's visible KV rows only (a NaN a row
can see still gives that row NaN), for every algorithm at 1, 2 and 3 ranks, KV
splits that cut inside and at the edges of the hidden regions, fp32/fp16/bf16, GQA.
Rows with empty intervals get O = 0, LSE = -inf and exactly zero gradients; KV rows
no row sees get exactly zero dK, dV.

Run: mpirun -n 3 python -m pytest --with-mpi -m mpi tests/python/test_masked_values.py
(the single-process tests run without MPI too).
"""

import itertools
import math

import pytest
import torch

import lvxattn
from dist_util import sub_comm, uneven_split
from masked_inputs import check_results, kv_splits, layout, make_problem, mismatch, reference_with_grads, run_distributed
from cases import TOL

WHERE = ["v_hidden", "k_hidden", "v_partial", "k_partial", "q_empty"]
POISON = ["nan", "inf", "-inf"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPE = dict(B=2, Lq=14, Lkv=40, Hq=12, Hkv=6, D=16)  # heads divisible by 1, 2, 3 (ulysses)


def check(got, ref, dtype, ranges, label, hidden=None):
    """Every result against the reference; exact zeros where nothing is seen (`hidden`:
    the KV rows no row sees, by default those of the layout)."""
    tol = TOL[dtype] * 2
    check_results(got, ref, ranges, label, tol, tol / 10, hidden)


# ---- one process ---------------------------------------------------------------

@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize("poison", POISON)
def test_issue_input(tensor, poison):
    """B=1, Lq=4, Lkv=10, one head, D=8, fp32; every row sees [5, 10); rows 0-4 of K or V poisoned."""
    gen = torch.Generator().manual_seed(3)
    q, k, v, do = (torch.randn(1, n, 1, 8, generator=gen) for n in (4, 10, 10, 4))
    (k if tensor == "k" else v)[:, :5] = float(poison)
    ranges = torch.tensor([[[5, 10]] * 4], dtype=torch.int32)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o, lse = lvxattn.cross_attention_forward(qg, kg, vg, q_ranges=ranges)
    o.backward(do)
    ref = reference_with_grads(q, k, v, do, ranges)
    got = {"o": o, "lse": lse, "dq": qg.grad, "dk": kg.grad, "dv": vg.grad}
    for name, want in ref.items():
        assert torch.isfinite(want).all()
        assert mismatch(got[name], want, 1e-5) is None, name
    assert kg.grad[:, :5].abs().max() == 0 and vg.grad[:, :5].abs().max() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("where,poison", list(itertools.product(WHERE, POISON)))
def test_one_process(where, poison, dtype):
    q, k, v, do, ranges = make_problem(**SHAPE, dtype=dtype, where=where, poison=poison, seed=len(where))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o, lse = lvxattn.cross_attention_forward(qg, kg, vg, q_ranges=ranges)
    o.backward(do)
    got = {"o": o, "lse": lse, "dq": qg.grad, "dk": kg.grad, "dv": vg.grad}
    check(got, reference_with_grads(q, k, v, do, ranges), dtype, ranges, f"{where} {poison}")


def test_a_visible_nan_still_reaches_the_rows_that_see_it():
    """The partial case is not vacuous: rows of kinds 1 and 2 see the poisoned row."""
    q, k, v, do, ranges = make_problem(**SHAPE, dtype=torch.float32, where="v_partial", poison="nan")
    o = lvxattn.cross_attention(q, k, v, q_ranges=ranges)
    seen = layout(SHAPE["Lkv"])["i2"] - 1
    sees = (ranges[..., 0] <= seen) & (seen < ranges[..., 1])  # [B, Lq]
    assert sees.any() and (~sees).any()
    assert torch.isnan(o[sees]).all()
    assert torch.isfinite(o[~sees]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_with_nan_lse_leave_the_rows_they_cannot_see_alone(dtype):
    """Every row sees KV row 0, whose K is NaN, so every LSE is NaN; the rows see
    different prefixes, and the KV rows none of them sees keep exactly zero dK, dV
    (P there is a select, not exp(-inf - NaN))."""
    gen = torch.Generator().manual_seed(5)
    q, do = (torch.randn(1, 9, 4, 16, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(1, 20, 2, 16, generator=gen).to(dtype) for _ in range(2))
    k[:, 0] = math.nan
    ranges = torch.tensor([[[0, 10 + i % 3] for i in range(9)]], dtype=torch.int32)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    o, lse = lvxattn.cross_attention_forward(qg, kg, vg, q_ranges=ranges)
    o.backward(do)
    got = {"o": o, "lse": lse, "dq": qg.grad, "dk": kg.grad, "dv": vg.grad}
    ref = reference_with_grads(q, k, v, do, ranges)
    for name, want in ref.items():
        assert mismatch(got[name], want, TOL[dtype] * 2) is None, name
    assert kg.grad[:, 12:].abs().max() == 0 and vg.grad[:, 12:].abs().max() == 0


# ---- under MPI -----------------------------------------------------------------

mpi = pytest.importorskip("mpi4py.MPI")
WORLD = mpi.COMM_WORLD


ALGORITHMS = ["lvx", "lvx/overlap", "lvx/single", "ring", "ulysses"]
# Every algorithm with every placement; dtype and poison value cycle through the cases.
CASES = [(a, w, DTYPES[n % 3], POISON[(n // 3 + n) % 3])
         for n, (a, w) in enumerate(itertools.product(ALGORITHMS, WHERE))]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("tensor", ["k", "v"])
def test_issue_input_does_not_depend_on_the_split(tensor):
    """The issue's problem on two ranks with KV splits [4, 6] and [5, 5]."""
    with sub_comm(WORLD, 2) as comm:
        if comm is None:
            return
        gen = torch.Generator().manual_seed(3)
        q, k, v, do = (torch.randn(1, n, 1, 8, generator=gen) for n in (4, 10, 10, 4))
        (k if tensor == "k" else v)[:, :5] = math.nan
        ranges = torch.tensor([[[5, 10]] * 4], dtype=torch.int32)
        ref = reference_with_grads(q, k, v, do, ranges)
        for algorithm in ("lvx", "lvx/overlap", "ring"):  # one head: no ulysses at P = 2
            for lkv in ([4, 6], [5, 5]):
                got = run_distributed(comm, algorithm, (q, k, v, do, ranges), [2, 2], lkv)
                check(got, ref, torch.float32, ranges, f"{algorithm} split {lkv}", hidden=list(range(5)))


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{w}-{p}-{str(d)[6:]}" for a, w, d, p in CASES])
def test_every_algorithm_rank_count_and_split(case):
    algorithm, where, dtype, poison = case
    problem = make_problem(**SHAPE, dtype=dtype, where=where, poison=poison, seed=7)
    q, k, v, do, ranges = problem
    ref = reference_with_grads(q, k, v, do, ranges)
    for P in range(1, min(WORLD.size, 3) + 1):
        with sub_comm(WORLD, P) as comm:
            if comm is None:
                continue
            for n, lkv in enumerate(kv_splits(SHAPE["Lkv"], P)):
                lq = uneven_split(SHAPE["Lq"], P, 0 if n else None, n)
                got = run_distributed(comm, algorithm, problem, lq, lkv)
                check(got, ref, dtype, ranges, f"{algorithm} P={P} lq={lq} lkv={lkv}")
