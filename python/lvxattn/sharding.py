"""How a sequence is split over ranks when nobody says otherwise: the package's one rule.

DESIGN.md, Sharding: each global sequence is split into contiguous pieces in rank
order; rank r owns rows ``[offset_r, offset_r + count_r)``. The library accepts any
split (uneven, empty ranks); where the package chooses one (feature files, the
training job, the benchmarks and the cost model's predictions), it is this:
``total // parts`` rows each, and the first ``total % parts`` ranks one more.
"""

from __future__ import annotations


def even_counts(total: int, parts: int) -> list[int]:
    """Rows per rank, as even as possible; the first ``total % parts`` ranks get one more.

    ``even_counts(10, 4) == [3, 3, 2, 2]``. Raises ValueError for ``parts < 1`` or ``total < 0``.
    """
    if parts < 1 or total < 0:
        raise ValueError(f"cannot split {total} rows over {parts} ranks")
    base, extra = divmod(total, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


def even_rows(total: int, parts: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of ``rank``'s piece under ``even_counts``."""
    if not 0 <= rank < parts:
        raise ValueError(f"rank {rank} is not in [0, {parts})")
    base, extra = divmod(total, parts)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
