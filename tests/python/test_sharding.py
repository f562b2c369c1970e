"""The package's one default split (lvxattn.sharding): the first ranks get the extra rows,
and even_rows gives each rank's piece of that split."""

import pytest
from hypothesis import given, strategies as st

from lvxattn import data, sharding


@given(st.integers(0, 10_000), st.integers(1, 64))
def test_even_rows_are_the_pieces_of_even_counts(total, parts):
    counts = sharding.even_counts(total, parts)
    starts = [sum(counts[:r]) for r in range(parts)]
    assert [sharding.even_rows(total, parts, r) for r in range(parts)] == \
        [(s, s + c) for s, c in zip(starts, counts)]
    assert counts == sorted(counts, reverse=True)          # the first ranks hold the extra rows
    assert max(counts) - min(counts) <= 1 and sum(counts) == total


def test_examples_and_errors():
    assert sharding.even_counts(10, 4) == [3, 3, 2, 2]
    assert sharding.even_rows(10, 4, 2) == (6, 8)
    assert data.even_counts is sharding.even_counts          # one rule, one home
    with pytest.raises(ValueError):
        sharding.even_counts(5, 0)
    with pytest.raises(ValueError):
        sharding.even_rows(5, 2, 2)
