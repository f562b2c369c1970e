"""Shared bits of the benchmark scripts: run metadata, where results go, CSV/table output.

New results go to a fresh file under ``experiments/results/new/`` (ignored by git)
unless a path is given; no script writes into a file that git tracks, so a committed
measurement is only ever replaced on purpose (copy the new file over it and commit).
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NEW_RESULTS = RESULTS / "new"


def git_sha() -> str:
    """$LVX_GIT_SHA when set (a copy of the tree whose git metadata may be stale or absent,
    as on a lent GPU machine), else the checkout's short sha (-dirty with local changes)."""
    if os.environ.get("LVX_GIT_SHA"):
        return os.environ["LVX_GIT_SHA"]
    try:
        root = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return os.environ.get("LVX_GIT_SHA", "unknown")


def device_name(kind: str = "cpu") -> str:
    if kind == "cuda":
        import torch
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def metadata(kind: str = "cpu") -> dict:
    return {"date": datetime.date.today().isoformat(), "git_sha": git_sha(), "device": device_name(kind)}


def new_results_path(stem: str, ext: str = "csv") -> str:
    """A fresh path for this run: ``experiments/results/new/<stem>_<git sha>_<date>-<time>.<ext>``
    (no extension with ``ext=""``: a folder)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    return str(NEW_RESULTS / (f"{stem}_{git_sha()}_{stamp}" + (f".{ext}" if ext else "")))


def is_committed(path: str) -> bool:
    """True when git tracks ``path`` (a committed result)."""
    path = os.path.abspath(path)
    try:
        return subprocess.run(["git", "ls-files", "--error-unmatch", "--", path], cwd=os.path.dirname(path) or ".",
                              capture_output=True).returncode == 0
    except OSError:
        return False


def refuse_committed(path: str) -> None:
    """SystemExit when ``path`` is a committed result: measurements are added, never overwritten."""
    if path and os.path.exists(path) and is_committed(path):
        raise SystemExit(f"{path} is a committed result; write to a new file (the default, under "
                         f"{os.path.relpath(NEW_RESULTS)}) and copy it over deliberately")


def write_csv(path: str, rows: list[dict]) -> None:
    """Appends ``rows`` to ``path`` (header first when the file is new); never to a committed file."""
    if not rows:
        return
    refuse_committed(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fields = list(rows[0].keys())
    for r in rows[1:]:
        fields += [k for k in r if k not in fields]
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 1000 else f"{x:.0f}"
    return "" if x is None else str(x)


# Messages of the allocation failures that do not arrive as torch.cuda.OutOfMemoryError
# (NCCL, cuBLAS and the library's own CUDA calls raise RuntimeError with these).
OOM_MARKERS = ("out of memory", "CUDA_ERROR_OUT_OF_MEMORY", "cudaErrorMemoryAllocation", "OutOfMemory")


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure (torch's, the host's, or one by message)."""
    import torch
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or any(m in str(exc) for m in OOM_MARKERS)


class Watchdog:
    """Aborts the MPI job (`comm.Abort(3)`) when the ``with`` block outlives ``seconds``:
    a rank that ran out of memory inside a collective leaves the others waiting forever.
    `what` names the trial in the message on stderr."""

    def __init__(self, comm, seconds: float, what: str):
        self._timer = threading.Timer(seconds, self._fire, args=(comm, seconds, what))
        self._timer.daemon = True

    @staticmethod
    def _fire(comm, seconds, what):
        prog = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "benchmark"
        print(f"{prog}: {what} still running after {seconds:.0f} s; aborting "
              "(likely one rank ran out of memory inside a collective)", file=sys.stderr, flush=True)
        comm.Abort(3)

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
