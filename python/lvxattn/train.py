"""The main job (``python -m lvxattn run``): train a stack of cross-attention layers
on an HDF5 feature file, one rank per GPU (or CPU socket) under mpirun/srun.

Each rank reads its shards, trains a ``CrossAttentionStack`` for a few steps on a
synthetic loss, and measures step time, attention time, bytes moved and peak
memory; rank 0 prints a table and writes a JSON report. Setup errors (bad file,
flags that disagree with it, no GPU) are agreed on by all ranks and end every rank
with exit code 2; an error in the middle of a step aborts the whole job, so no rank
is left waiting in a collective.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

from .cli import EXIT_BAD_INPUT, plural
from .devices import pick_device

# ---------------------------------------------------------------------------
# run: setup


def check_flags(args: argparse.Namespace, world: int) -> None:
    if args.heads % args.kv_heads:
        raise ValueError(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    if args.algorithm == "ulysses" and (args.heads % world or args.kv_heads % world):
        raise ValueError(f"--algorithm ulysses needs --heads ({args.heads}) and --kv-heads "
                         f"({args.kv_heads}) divisible by the number of ranks ({world})")


class LossNotFinite(FloatingPointError):
    """The (allreduced, hence agreed) loss is NaN or infinite: every rank stops alike."""


class MasterWeights:
    """fp32 copies of fp16/bf16 weights for the optimizer, so small updates and Adam's
    eps do not vanish in 16 bits; ``step`` moves grads in, steps, and copies back."""

    def __init__(self, model, make_optimizer):
        import torch

        self.params = list(model.parameters())
        self.wide = self.params[0].dtype != torch.float32 if self.params else False
        self.masters = ([p.detach().float().clone().requires_grad_(True) for p in self.params]
                        if self.wide else self.params)
        self.optimizer = make_optimizer(self.masters)

    def step(self) -> None:
        import torch

        if self.wide:
            for master, p in zip(self.masters, self.params):
                master.grad = None if p.grad is None else p.grad.float()
        self.optimizer.step()
        if self.wide:
            with torch.no_grad():
                for master, p in zip(self.masters, self.params):
                    p.copy_(master)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None
        if self.wide:
            for master in self.masters:
                master.grad = None


def build_model(args: argparse.Namespace, meta, comm, device, dtype):
    """The stack every rank builds identically (same seed, same draws)."""
    import torch
    from .layers import CrossAttentionStack

    torch.manual_seed(args.seed)
    model = CrossAttentionStack(args.layers, meta.text_dim, meta.visual_dim, args.heads, args.kv_heads,
                                args.head_dim, recompute=args.recompute, comm=comm,
                                algorithm=args.algorithm, gate_init=args.gate_init, dtype=dtype)
    return model.to(device)


def synthetic_loss(out, global_elements: int):
    """This rank's share of mean(out^2) over the global text output; summed over ranks it is the loss."""
    return out.float().pow(2).sum() / global_elements


def allreduce_gradients(model, comm) -> None:
    """Sum weight gradients over ranks (each rank's gradient covers only its shards)."""
    import numpy as np
    import torch
    from mpi4py import MPI

    if comm.Get_size() == 1:
        return
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        host = p.grad.detach().to("cpu", torch.float32).contiguous().numpy()
        summed = np.empty_like(host)
        comm.Allreduce(host, summed, op=MPI.SUM)
        p.grad.copy_(torch.from_numpy(summed))


# ---------------------------------------------------------------------------
# run: statistics


@dataclass
class AttentionTotals:
    """Attention statistics summed over every call of a step (``lvxattn.last_stats`` per call)."""

    calls: int = 0
    forward: dict = field(default_factory=dict)
    backward: dict = field(default_factory=dict)
    algorithm: str | None = None
    transport: str | None = None

    def add(self, phase: str, stats: dict | None) -> None:
        if not stats or phase not in stats:
            return
        into = getattr(self, phase)
        for key, value in stats[phase].items():
            if isinstance(value, (int, float)):
                into[key] = into.get(key, 0) + value
        self.algorithm = stats.get("algorithm", self.algorithm)
        self.transport = stats.get("transport", self.transport)


class AttentionStatsRecorder:
    """Reads ``lvxattn.last_stats()`` after each layer's attention forward and backward.

    Forward: a hook after each layer. Backward: layer l's attention backward is done
    when the gradient of its input h_l is complete (dh_l needs dQ_l), so a tensor hook
    on h_l reads it; layer 0's input needs no gradient, so it is read after
    ``backward()`` returns (``finish_backward``).
    """

    def __init__(self, model):
        self.totals = AttentionTotals()
        self._pending_backward = 0
        for layer in model.layers:
            layer.register_forward_pre_hook(self._before_layer)
            layer.register_forward_hook(self._after_layer)

    @staticmethod
    def _read() -> dict:
        from .api import last_stats
        return last_stats()

    def _before_layer(self, module, inputs):
        h = inputs[0]
        if h.requires_grad:
            h.register_hook(self._after_backward)

    def _after_layer(self, module, inputs, output):
        self.totals.add("forward", self._read())
        self.totals.calls += 1
        self._pending_backward += 1

    def _after_backward(self, grad):
        self.totals.add("backward", self._read())
        self._pending_backward -= 1

    def start_step(self) -> None:
        self.totals = AttentionTotals()
        self._pending_backward = 0

    def finish_backward(self) -> None:
        while self._pending_backward > 0:   # layers whose input needed no gradient
            self.totals.add("backward", self._read())
            self._pending_backward -= 1


def peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024   # Linux: KiB


def git_sha() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


COLUMNS = (
    ("rank", "the MPI rank"),
    ("Lq", "text rows (queries) this rank holds"),
    ("Lkv", "visual rows (keys/values) this rank holds"),
    ("step ms", "one training step, mean over the steps after the first (a warm-up)"),
    ("attn fwd ms", "the attention forwards of one step, summed over the layers"),
    ("attn bwd ms", "the attention backwards of one step, summed over the layers"),
    ("blocked ms", "of those, time spent waiting for other ranks' data: transfers not hidden behind "
                   "compute, or a rank with more work (a mask can make work uneven)"),
    ("sent MB", "bytes this rank sent in one step's attention (MiB)"),
    ("recv MB", "bytes this rank received (MiB)"),
    ("saved MB", "activations kept from forward for backward (MiB; recompute keeps less)"),
    ("peak MB", "peak memory of the rank (GPU: torch's allocator; CPU: the process's resident size)"),
)


def column_legend() -> str:
    width = max(len(name) for name, _ in COLUMNS)
    return "\n".join(f"  {name.rjust(width)}: {meaning}" for name, meaning in COLUMNS)


def summary_table(ranks: list[dict]) -> str:
    header = tuple(name for name, _ in COLUMNS)
    rows = []
    for r in ranks:
        fwd, bwd = r["attention"]["forward"], r["attention"]["backward"]
        blocked = None if not fwd and not bwd else fwd.get("blocked_s", 0) + bwd.get("blocked_s", 0)
        sent = None if not fwd and not bwd else fwd.get("bytes_sent", 0) + bwd.get("bytes_sent", 0)
        recv = None if not fwd and not bwd else fwd.get("bytes_recv", 0) + bwd.get("bytes_recv", 0)
        ms = lambda s: "n/a" if s is None else f"{1e3 * s:.1f}"   # noqa: E731
        rows.append((str(r["rank"]), str(r["text_rows"]), str(r["visual_rows"]), ms(r["step_s"]),
                     ms(fwd.get("total_s")), ms(bwd.get("total_s")), ms(blocked), _mb(sent), _mb(recv),
                     _mb(r["saved_activation_bytes"]), _mb(r["peak_memory_bytes"])))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# run: the job


def _say_error(comm, message: str) -> None:
    rank, size = comm.Get_rank(), comm.Get_size()
    print(f"lvxattn run: error (rank {rank}/{size}): {message}", file=sys.stderr, flush=True)


def run_job(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    from . import data

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()

    def setup():
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        check_flags(args, world)
        device = pick_device(args.device, comm)
        dtype = data.TORCH_DTYPES[args.dtype]
        return device, dtype

    try:
        device, dtype = data.agree_on_errors(comm, setup)
        shard = data.load_shard(args.features, comm, visual_split=args.visual_split,
                                text_split=args.text_split, dtype=dtype,
                                expect={"visual_dim": args.visual_dim, "text_dim": args.text_dim})
    except data.FeatureFileError as exc:
        _say_error(comm, str(exc))
        return EXIT_BAD_INPUT

    if args.algorithm == "auto":
        # The cost model behind "auto" uses this machine's measured rates (cached).
        from . import calibrate
        calibrate.apply(comm, device)
    try:
        report = train(args, comm, shard, device, dtype)
    except LossNotFinite as exc:   # the loss is allreduced: all ranks are here together
        _say_error(comm, str(exc))
        return 1
    except Exception:  # noqa: BLE001 - one failing rank must not leave the others in a collective
        _say_error(comm, "step failed:\n" + traceback.format_exc())
        comm.Abort(1)
        return 1
    if rank == 0:
        print(summary_table(report["ranks"]))
        print(column_legend())
        losses = report["loss"]
        print(f"loss {losses[0]:.6g} -> {losses[-1]:.6g} over {plural(len(losses), 'step')}; algorithm "
              f"{report['attention_algorithm'] or args.algorithm}, recompute {'on' if args.recompute else 'off'}, "
              f"{plural(world, 'rank')}, {device.type}, {args.dtype}")
        if not args.no_report:
            path = report_path(args.report)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                json.dump(report, f, indent=2)
            print(f"report: {os.path.abspath(path)}")
    return 0


def report_path(template: str, now: datetime.datetime | None = None) -> str:
    """``--report`` with ``<date>`` and ``<time>`` filled in (local time: 20261129, 153012)."""
    now = now or datetime.datetime.now()
    return template.replace("<date>", now.strftime("%Y%m%d")).replace("<time>", now.strftime("%H%M%S"))


def train(args: argparse.Namespace, comm, shard, device, dtype) -> dict:
    import torch

    from .layers import measure_saved
    from .progress import Progress

    rank, world = comm.Get_rank(), comm.Get_size()
    meta = shard.meta
    model = build_model(args, meta, comm, device, dtype)
    optimizer = MasterWeights(model, lambda params: torch.optim.AdamW(params, lr=args.lr))
    text = shard.text.to(device)
    visual = shard.visual.to(device)
    q_ranges = None if shard.q_ranges is None else shard.q_ranges.to(device)
    global_elements = meta.batch * meta.text_len * meta.text_dim
    recorder = AttentionStatsRecorder(model)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    losses, step_times, per_step_attention = [], [], []
    saved_bytes = None
    with Progress(args.steps, "training", unit="step", enabled=rank == 0 and not args.no_progress) as bar:
        for step in range(args.steps):
            recorder.start_step()
            comm.Barrier()
            synchronize()
            start = time.perf_counter()
            optimizer.zero_grad()
            with measure_saved(model) as meter:
                out = model(text, visual, q_ranges)
                loss = synthetic_loss(out, global_elements)
            loss.backward()
            recorder.finish_backward()
            allreduce_gradients(model, comm)
            optimizer.step()
            synchronize()
            step_times.append(time.perf_counter() - start)
            saved_bytes = meter.bytes
            loss_value = comm.allreduce(float(loss.detach()))
            if not math.isfinite(loss_value):
                raise LossNotFinite(f"loss is {loss_value} at step {step}; try a smaller --lr or fp32")
            losses.append(loss_value)
            per_step_attention.append(recorder.totals)
            bar.update(1, postfix=f"loss {loss_value:.4g}")

    timed = step_times[1:] if len(step_times) > 1 else step_times   # step 0 warms up
    last = per_step_attention[-1]
    mine = {
        "rank": rank, "host": platform.node(), "device": str(device),
        "text_rows": shard.text.shape[1], "visual_rows": shard.visual.shape[1],
        "text_offset": shard.text_offset, "visual_offset": shard.visual_offset,
        "step_s": sum(timed) / len(timed), "step_times_s": step_times,
        "attention": {"calls_per_step": last.calls, "forward": last.forward, "backward": last.backward},
        "saved_activation_bytes": saved_bytes, "peak_memory_bytes": peak_memory_bytes(device),
    }
    ranks = comm.gather(mine, root=0)
    return {
        "command": "run", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(), "world_size": world,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "features": {"path": meta.path, "batch": meta.batch, "visual_len": meta.visual_len,
                     "text_len": meta.text_len, "visual_dim": meta.visual_dim, "text_dim": meta.text_dim,
                     "frames": meta.frames, "tokens_per_frame": meta.tokens_per_frame,
                     "q_ranges": meta.has_q_ranges, "attrs": meta.attrs},
        "attention_algorithm": last.algorithm, "attention_transport": last.transport,
        "loss": losses, "ranks": ranks,
    }
