"""A small progress bar on stderr, drawn by one rank only (rank 0 by convention).

On a terminal it redraws one line in place; in a log file (not a TTY) it writes
a fresh line at most every few seconds and at the end, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{sec:02d}" if hours else f"{minutes:02d}:{sec:02d}"


def _format_amount(x: float) -> str:
    return f"{x:.0f}" if x == int(x) or x >= 100 else f"{x:.2f}"


class Progress:
    """``with Progress(total, "writing", unit="MB") as bar: bar.update(n)``.

    ``enabled=False`` (every rank but 0) makes every call a no-op.
    """

    def __init__(self, total: float, desc: str = "", unit: str = "it", enabled: bool = True,
                 stream: TextIO | None = None, width: int = 30, min_interval_s: float | None = None):
        self.total = float(total)
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0.0
        self.postfix = ""
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._min_interval = min_interval_s if min_interval_s is not None else (0.1 if self._tty else 5.0)
        self._start = time.perf_counter()
        self._last_draw = -float("inf")
        self._drawn_done: float | None = None
        self._closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, amount: float = 1, postfix: str | None = None) -> None:
        if not self.enabled:
            return
        self.done += amount
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if now - self._last_draw >= self._min_interval or self.done >= self.total:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The bar as text, e.g. ``steps |#####-----| 5/10 [00:02<00:02, 2.50 it/s]``."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self._start
        frac = min(self.done / self.total, 1.0) if self.total > 0 else 1.0
        filled = int(round(frac * self.width))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else 0.0
        count = f"{_format_amount(self.done)}/{_format_amount(self.total)}"
        text = (f"{self.desc} |{'#' * filled}{'-' * (self.width - filled)}| {count} "
                f"[{_format_seconds(elapsed)}<{_format_seconds(remaining)}, {rate:.2f} {self.unit}/s]")
        return f"{text} {self.postfix}" if self.postfix else text

    def _draw(self, now: float) -> None:
        self._last_draw = now
        self._drawn_done = self.done
        if self._tty:
            self.stream.write("\r" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._drawn_done != self.done:  # always leave the final state on screen
            self._draw(time.perf_counter())
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
