"""Calibration of the cost model behind ``algorithm="auto"``: this machine's attention
kernel rate and the link's bandwidth and latency, measured once and cached.

Call it once per communicator and device, on every rank, before using "auto"::

    import lvxattn.calibrate
    lvxattn.calibrate.apply(comm, "cuda")      # collective over comm; a few seconds the first time
    o = lvxattn.cross_attention(q, k, v, comm=comm, algorithm="auto")

What is measured (the model: ``src/cost_model.cpp``):

- kernel: local forwards and backwards through ``cross_attention(comm=None)`` at a
  few shapes that vary Lq and Lkv apart (``KERNEL_SHAPES``), on every rank at once
  (ranks that share a node share its cores or memory bandwidth, as in a real run);
  the slowest rank counts. Per phase, a fit of the call time to
  ``flops·a + (B·Lkv·Hkv·D)·b + (B·Lq·Hq·D)·c + d`` (non-negative terms, relative
  residuals) gives the model's ``kernel`` costs (a, b, c per ring step, d once per call): on a GPU a step whose query block is
  short is far from flops-bound (K/V tiles and dK/dV are read and written once per
  step whatever Lq is), and the fit carries that. Flops: 4·B·Hq·Lq·Lkv·D forward,
  2.5× that backward. ``flops_per_s`` (and the phases' ``fwd_/bwd_flops_per_s``) are
  the rates at the first shape, for reports and for a model without ``kernel``.
- link. CPU: an mpi4py ping-pong of numpy buffers between rank 0 and the last rank
  (under block mapping the hop that crosses nodes, which paces a ring). CUDA: the
  library's own transport on the whole communicator, timing ``ring`` forwards with
  one query row per rank at two K/V block sizes (``measure_link_library``), for each
  device transport the call may use and every rank can run (``DEVICE_TRANSPORTS``:
  "auto" measures nccl, mpi-direct and mpi-staged; "mpi" the two MPI paths). Their
  ``links`` let ``transport="auto"`` (and "mpi") take the fastest predicted path;
  ``bytes_per_s`` and ``latency_s`` are those of the first (the choice without links).

The cache is one JSON file per host and device, ``calibration-<host>-<device>.json``
under ``$LVX_CACHE_DIR`` (default ``~/.cache/lvxattn``), one entry per (dtype,
transport, ranks per node, nodes, threads). ``force=True`` measures again. ``auto``
uses rank 0's parameters, so rank 0's cache decides on every rank.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import time
from typing import Optional

import torch

from . import _core, api

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The problems timed for the kernel costs, (Lq, Lkv, H, D) per device type: the first
# sets the reported rates; the others vary Lq and Lkv apart so the fit can tell the
# flops from the per-row terms.
KERNEL_SHAPES = {
    "cpu": [(256, 4096, 8, 64), (32, 4096, 8, 64), (256, 512, 8, 64), (32, 512, 8, 64)],
    "cuda": [(1024, 16384, 16, 128), (256, 32768, 16, 128), (4096, 4096, 16, 128), (256, 4096, 16, 128),
             (2048, 65536, 16, 128), (8192, 16384, 16, 128)],
}
MODEL_VERSION = 6  # part of the cache key: entries of an older model (or kernels) are measured again
# The device transports a transport asked for may run, in the planner's order of preference.
DEVICE_TRANSPORTS = {"auto": ("nccl", "mpi-direct", "mpi-staged"), "mpi": ("mpi-direct", "mpi-staged"),
                     "nccl": ("nccl",), "mpi-direct": ("mpi-direct",), "mpi-staged": ("mpi-staged",)}
PING_BYTES = (8, 4 << 20)  # latency, bandwidth
LINK_ROWS = {"cuda": (64, 65536)}  # K/V rows per rank for the two library exchanges (Hkv=8, D=128)


def cache_dir() -> str:
    return os.environ.get("LVX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lvxattn")


def device_label(device: torch.device | str) -> str:
    """A file-name-safe name of the device model: the GPU name, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-") or device.type


def cache_path(device: torch.device | str = "cpu") -> str:
    return os.path.join(cache_dir(), f"calibration-{socket.gethostname()}-{device_label(device)}.json")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def polite_barrier(comm, poll_s: float = 0.002) -> None:
    """A barrier that sleeps while it waits: idle ranks must not take cores from
    ranks that are being timed (MPI's own barrier spins)."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)


def time_kernel(device: torch.device | str, dtype: str, shape, repeats: int = 3) -> tuple[float, float]:
    """Median forward and backward seconds of one local attention of ``shape``."""
    device = torch.device(device)
    lq, lkv, h, d = shape
    dt = DTYPES[dtype]
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, n, h, d, device=device, dtype=dt, generator=gen).requires_grad_()
               for n in (lq, lkv, lkv))
    do = torch.randn(1, lq, h, d, device=device, dtype=dt, generator=gen)
    fwd, bwd = [], []
    for it in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        o = api.cross_attention(q, k, v)
        _sync(device)
        t1 = time.perf_counter()
        o.backward(do)
        _sync(device)
        t2 = time.perf_counter()
        if it:  # the first is a warm-up
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd)


def features(shape, phase: str) -> list[float]:
    """The model's terms for one step of ``shape``: flops, K elements, Q elements, 1."""
    lq, lkv, h, d = shape
    flops = 4.0 * h * lq * lkv * d * (2.5 if phase == "bwd" else 1.0)
    return [flops, float(lkv * h * d), float(lq * h * d), 1.0]


def fit_step_costs(rows: list[list[float]], times: list[float]) -> list[float]:
    """Non-negative coefficients of ``times ≈ rows · c``, fitted on relative residuals
    (a term whose best value is negative is dropped and the rest refitted)."""
    import numpy as np
    a = np.asarray(rows, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    a, ones = a / t[:, None], np.ones_like(t)
    active = list(range(a.shape[1]))
    while True:
        scale = np.abs(a[:, active]).max(axis=0)
        sol, *_ = np.linalg.lstsq(a[:, active] / scale, ones, rcond=None)
        sol = sol / scale
        if (sol >= 0).all() or len(active) == 1:
            break
        active.pop(int(np.argmin(sol)))
    coef = [0.0] * a.shape[1]
    for i, c in zip(active, sol):
        coef[i] = max(float(c), 0.0)
    return coef


def measure_kernel(device: torch.device | str = "cpu", dtype: str = "fp32", shapes=None, repeats: int = 3,
                   comm=None) -> dict:
    """The step-cost fit and the rates at the first shape (slowest rank of ``comm``)."""
    device = torch.device(device)
    shapes = shapes or KERNEL_SHAPES[device.type]
    measured = []
    for shape in shapes:
        tf, tb = time_kernel(device, dtype, shape, repeats)
        if comm is not None:  # the slowest rank paces every ring step
            tf, tb = comm.allreduce(tf, op=_max_op()), comm.allreduce(tb, op=_max_op())
        measured.append((shape, tf, tb))
    kernel = []
    for phase, col in (("fwd", 1), ("bwd", 2)):
        kernel += fit_step_costs([features(m[0], phase) for m in measured], [m[col] for m in measured])
    shape, tf, tb = measured[0]
    flops = features(shape, "fwd")[0]
    return {"fwd_flops_per_s": flops / tf, "bwd_flops_per_s": 2.5 * flops / tb,
            "flops_per_s": 3.5 * flops / (tf + tb), "kernel": kernel,
            "kernel_points": [[list(m[0]), m[1], m[2]] for m in measured]}


def _ping_pong(comm, peer: int, nbytes: int, repeats: int) -> float:
    """One-way seconds for a message of nbytes between this rank and peer (median)."""
    import numpy as np
    buf = np.zeros(max(nbytes, 1), dtype=np.uint8)
    times = []
    for it in range(repeats + 2):
        t0 = time.perf_counter()
        if comm.rank == 0:
            comm.Send(buf, dest=peer, tag=7)
            comm.Recv(buf, source=peer, tag=7)
        else:
            comm.Recv(buf, source=0, tag=7)
            comm.Send(buf, dest=0, tag=7)
        if it >= 2:
            times.append((time.perf_counter() - t0) / 2)
    return statistics.median(times)


def measure_link_mpi(comm, repeats: int = 20) -> dict:
    """Bandwidth and latency between rank 0 and the last rank, host buffers over MPI."""
    peer = comm.size - 1
    out = None
    if comm.rank in (0, peer):
        t_small = _ping_pong(comm, peer, PING_BYTES[0], repeats)
        t_big = _ping_pong(comm, peer, PING_BYTES[1], max(3, repeats // 4))
        out = {"latency_s": t_small,
               "bytes_per_s": (PING_BYTES[1] - PING_BYTES[0]) / max(t_big - t_small, 1e-9)}
    polite_barrier(comm)
    return comm.bcast(out, root=0)


def measure_link_library(comm, device: torch.device, transport: str = "auto", dtype: str = "bf16",
                         repeats: int = 5) -> dict:
    """Per-link bandwidth and per-message latency of the library's own transport on
    ``comm`` itself: NCCL, for one, gives each peer fewer channels as the communicator
    grows, so a pair measured apart overstates what a ring of P gets. Ring forwards
    with one query row and K/V blocks of two sizes on every rank send P − 1 messages
    per rank one after another: the bytes and time between the two sizes give the
    bandwidth; the small one less the same call without a communicator (which the
    kernel fit's per-call part counts), over P − 1, the latency."""
    from mpi4py import MPI
    hkv, d, dt = 8, 128, DTYPES[dtype]

    def timed(group, q, k) -> float:
        times = []
        for it in range(repeats + 1):
            comm.Barrier()
            _sync(device)
            t0 = time.perf_counter()
            api.cross_attention(q, k, k, comm=group, algorithm="ring", transport=transport)
            _sync(device)
            if it:
                times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
        return statistics.median(times)

    points, local = [], None
    for rows in LINK_ROWS.get(device.type, (64, 16384)):
        q = torch.randn(1, 1, hkv, d, device=device, dtype=dt)
        k = torch.randn(1, rows, hkv, d, device=device, dtype=dt)
        if local is None:
            local = timed(None, q, k)
        t = timed(comm, q, k)
        points.append((comm.allreduce(api.last_stats()["forward"]["bytes_sent"], op=MPI.MAX), t))
    (b0, t0), (b1, t1) = points
    out = {"latency_s": max((t0 - local) / max(comm.size - 1, 1), 1e-6),
           "bytes_per_s": (b1 - b0) / max(t1 - t0, 1e-9)}
    polite_barrier(comm)
    return comm.bcast(out, root=0)


def measure_links(comm, device: torch.device, transport: str = "auto", dtype: str = "bf16") -> dict:
    """``{name: {"bytes_per_s", "latency_s"}}`` for each device transport that ``transport``
    may run (``DEVICE_TRANSPORTS``) and every rank can: one the planner refuses (not built,
    ranks sharing a GPU for NCCL, an MPI that does not take CUDA buffers) raises the same
    error on every rank and is left out. Collective."""
    links = {}
    for name in DEVICE_TRANSPORTS[transport]:
        try:
            links[name] = measure_link_library(comm, device, name, dtype)
        except (_core.UnsupportedError, _core.RankMismatchError, _core.InvalidArgumentError):
            continue
    return links


def _entry_key(comm, device: torch.device, dtype: str, transport: str) -> str:
    from mpi4py import MPI
    per_node, nodes = 1, 1
    if comm is not None:
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        per_node, nodes = node.size, comm.allreduce(1 if node.rank == 0 else 0)
        node.Free()
    # The kernels measured: on Hopper the sm_90a ones unless LVX_CUDA_SM90=0 (cuda/).
    kernels = ":kernels=sm80" if device.type == "cuda" and os.environ.get("LVX_CUDA_SM90") == "0" else ""
    return (f"{device.type}:{dtype}:{transport}:ranks_per_node={per_node}:nodes={nodes}"
            f":threads={torch.get_num_threads()}:model={MODEL_VERSION}{kernels}")


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def calibrate(comm=None, device: torch.device | str = "cpu", dtype: Optional[str] = None,
              transport: str = "auto", force: bool = False) -> dict:
    """The cost parameters of this machine: from the cache, or measured (collective
    over ``comm``) and stored. Returns ``{flops_per_s, bytes_per_s, latency_s, ...}``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = dtype or ("bf16" if device.type == "cuda" else "fp32")
    key = _entry_key(comm, device, dtype, transport)
    rank = 0 if comm is None else comm.rank
    path = cache_path(device)
    entry = None
    if rank == 0 and not force:
        entry = _load(path).get(key)
    if comm is not None:
        entry = comm.bcast(entry, root=0)
    if entry is not None:
        return entry

    if comm is not None:
        polite_barrier(comm)
    kernel = measure_kernel(device, dtype, comm=comm)
    if comm is not None:  # one fit for all ranks: rank 0's (every rank timed the slowest)
        kernel = comm.bcast(kernel, root=0)
    if comm is None or comm.size < 2:
        link = {"bytes_per_s": 1e15, "latency_s": 0.0}  # nothing travels
    elif device.type == "cpu":
        link = measure_link_mpi(comm)
    else:
        links = measure_links(comm, device, transport)
        if not links:
            raise _core.UnsupportedError(f"no device transport for '{transport}' runs on this communicator")
        link = {**next(iter(links.values())), "links": links}
    entry = {**kernel, **link, "key": key, "host": socket.gethostname(), "device": device_label(device),
             "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if rank == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cache = _load(path)
        cache[key] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return entry


def _max_op():
    from mpi4py import MPI
    return MPI.MAX


def core_dtype(label: str) -> _core.DType:
    """A dtype label of DTYPES ("fp32", "fp16", "bf16") as the library's dtype."""
    return api._DTYPES[DTYPES[label]]


def _links(params: dict) -> dict:
    return {name: (v["bytes_per_s"], v["latency_s"]) for name, v in (params.get("links") or {}).items()}


def cost_params(params: dict) -> _core.CostParams:
    """A calibration (what ``calibrate`` returns) as the cost model's parameters, for
    ``_core.Plan.predict``. Raises InvalidArgumentError for values the model rejects."""
    return _core.CostParams(params["flops_per_s"], params["bytes_per_s"], params["latency_s"],
                            params.get("kernel") or [], _links(params))


def set_cost_params(comm, device: torch.device | str, transport: str, params: dict) -> None:
    """Gives ``params`` to the context that plans calls on (comm, device, transport)."""
    api.set_cost_params(params["flops_per_s"], params["bytes_per_s"], params["latency_s"], comm=comm,
                        device=device, transport=transport, kernel=params.get("kernel"), links=_links(params))


def apply(comm=None, device: torch.device | str = "cpu", transport: str = "auto", dtype: Optional[str] = None,
          force: bool = False) -> dict:
    """Calibrates (or reads the cache) and sets the cost parameters used by
    ``algorithm="auto"`` on this communicator and device. Collective; returns them."""
    params = calibrate(comm, device, dtype, transport, force)
    set_cost_params(comm, device, transport, params)
    return params
