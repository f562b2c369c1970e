"""The barrier protocol of the sm_90a backward's late dQ (attend_bwd_sm90.cuh, kLate), run on
the host by cuda/dev/late_dq_protocol_model.py: clean over random interleavings and KV-block
sizes, with and without turns, and each deliberate fault in the protocol is caught (so the
model can fail). The kernel itself runs in tests/python/test_gpu_kernels.py."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "late_dq_protocol_model", Path(__file__).resolve().parents[2] / "cuda" / "dev" / "late_dq_protocol_model.py")
model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model)


def errors(turns: bool, cases: int = 400, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(cases):
        blocks = [rng.randint(1, 6) for _ in range(rng.randint(1, 5))]
        err = model.run(blocks, rng, turns)
        if err:
            out.append(err)
    return out


@pytest.mark.parametrize("turns", [False, True])
def test_protocol_clean(turns):
    assert errors(turns) == []


def _swap_pairs(ops, a, b):
    """ops with every adjacent pair (kind a, kind b) swapped."""
    ops = list(ops)
    for i in range(len(ops) - 1):
        if ops[i][0] == a and ops[i + 1][0] == b:
            ops[i], ops[i + 1] = ops[i + 1], ops[i]
    return ops


def _mutated(monkeypatch, edit):
    original = model.program
    monkeypatch.setattr(model, "program", lambda w, blocks, turns=False: edit(w, original(w, blocks, turns)))


@pytest.mark.parametrize("turns", [False, True])
def test_write_before_wait_is_caught(monkeypatch, turns):
    # dSᵀ stored into the buffer before waiting for the other warpgroup's signal
    _mutated(monkeypatch, lambda w, ops: _swap_pairs(ops, "sync", "write"))
    found = errors(turns)
    assert any("before both dQ read" in e for e in found), found[:3]


def test_signal_before_dq_is_caught(monkeypatch):
    # ds_ready arrived before this warpgroup's dQ read the older buffer
    _mutated(monkeypatch, lambda w, ops: _swap_pairs(ops, "read", "arrive"))
    found = errors(False)
    assert any("before both dQ read" in e for e in found), found[:3]


def test_missing_first_turn_is_caught(monkeypatch):
    _mutated(monkeypatch, lambda w, ops: ops[1:] if w == 1 else ops)
    found = errors(True, cases=50)
    assert found and all("deadlock" in e for e in found), found[:3]


def test_missing_last_turn_wait_is_caught(monkeypatch):
    _mutated(monkeypatch, lambda w, ops: ops[:-1] if w == 0 else ops)
    found = errors(True, cases=50)
    assert found and all("left open" in e for e in found), found[:3]
