"""The build list and the round order of experiments/bench_ab.py (pure functions; the
timing itself needs a GPU and is a script, not a test)."""
from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_ab", Path(__file__).resolve().parents[2] / "experiments" / "bench_ab.py")
bench_ab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_ab)


def test_two_builds_alternate():
    assert [bench_ab.round_order(2, r) for r in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]


@pytest.mark.parametrize("n", range(2, 9))
def test_every_build_first_and_last_equally_often(n):
    orders = [bench_ab.round_order(n, r) for r in range(2 * n)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert orders[1] == orders[0][::-1]  # mirrored pairs
    assert Counter(o[0] for o in orders) == Counter({i: 2 for i in range(n)})
    assert Counter(o[-1] for o in orders) == Counter({i: 2 for i in range(n)})


def test_parse_builds():
    builds = bench_ab.parse_builds("old=/a", "new=/b", "e50204f", "unknown",
                                   ["v1=/c@0c96425", "v2=/d", "v3=/e@x/y", "v4=/f@"])
    assert [tuple(b) for b in builds] == [("old", "/a", "e50204f"), ("new", "/b", "unknown"),
                                          ("v1", "/c", "0c96425"), ("v2", "/d", "unknown"),
                                          ("v3", "/e@x/y", "unknown"), ("v4", "/f", "unknown")]


@pytest.mark.parametrize("a, b, extra, message", [
    ("old=/a", "old=/b", [], "labels must be unique"),
    ("old=/a", "new=/b", ["new=/c@abc"], "labels must be unique"),
    ("old=/a", "new=/b", ["v1"], "expected LABEL=DIR"),
    ("=/a", "new=/b", [], "expected LABEL=DIR"),
    ("old=/a", "new=", [], "expected LABEL=DIR"),
    ("old=/a", "new=/b", [f"v{i}=/c" for i in range(25)], "at most 26"),
])
def test_parse_builds_errors(a, b, extra, message):
    with pytest.raises(ValueError, match=message):
        bench_ab.parse_builds(a, b, "x", "y", extra)
