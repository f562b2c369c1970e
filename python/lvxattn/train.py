"""Command line: ``python -m lvxattn make-features ...`` and ``python -m lvxattn run ...``.

``make-features`` writes a synthetic HDF5 feature file (one process).
``run`` is the main job, one rank per GPU (or CPU socket) under mpirun/srun: it
reads this rank's shards, trains a ``CrossAttentionStack`` for a few steps on a
synthetic loss, and reports step time, attention time, bytes moved and peak
memory per rank (table on rank 0, JSON with ``--report``).

Setup errors (bad file, flags that disagree with it, no GPU) are agreed on by all
ranks and end every rank with exit code 2; an error in the middle of a step aborts
the whole job, so no rank is left waiting in a collective.
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
from typing import Sequence

EXIT_BAD_INPUT = 2
ALGORITHMS = ("lvx", "ring", "ulysses", "auto")
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID",
                        "MV2_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK")


# ---------------------------------------------------------------------------
# Argument parsing


def _split_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from . import data

    parser = argparse.ArgumentParser(prog="python -m lvxattn",
                                     description="Distributed cross-attention over long visual inputs.")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-features", help="write a synthetic HDF5 feature file (one process)")
    make.add_argument("output", help="path of the .h5 file to write")
    make.add_argument("--batch", type=_positive, default=1)
    make.add_argument("--visual-len", type=_positive, help="visual tokens, stored [B, Lkv, Dv]")
    make.add_argument("--frames", type=_positive, help="with --tokens-per-frame: stored [B, frames, tokens, Dv]")
    make.add_argument("--tokens-per-frame", type=_positive)
    make.add_argument("--text-len", type=_positive, required=True)
    make.add_argument("--visual-dim", type=_positive, required=True)
    make.add_argument("--text-dim", type=_positive, required=True)
    make.add_argument("--dtype", choices=sorted(data.FILE_DTYPES), default="fp32", help="storage dtype")
    make.add_argument("--mask", choices=data.MASK_STYLES, default="all_previous",
                      help="q_ranges style (none: no q_ranges dataset, full attention)")
    make.add_argument("--num-images", type=_positive, help="images the text is spread over (default: frames, else 1)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--chunk-mb", type=float, default=32.0, help="rows written per chunk, in MiB")
    make.add_argument("--no-progress", action="store_true")

    run = commands.add_parser("run", help="train a cross-attention stack on a feature file (under mpirun/srun)")
    run.add_argument("--features", required=True, help="HDF5 feature file")
    run.add_argument("--layers", type=_positive, default=2)
    run.add_argument("--heads", type=_positive, default=8, help="query heads Hq")
    run.add_argument("--kv-heads", type=_positive, default=2, help="key/value heads Hkv")
    run.add_argument("--head-dim", type=_positive, default=64)
    run.add_argument("--visual-dim", type=_positive, help="required visual feature dim (checked against the file)")
    run.add_argument("--text-dim", type=_positive, help="required text hidden dim (checked against the file)")
    run.add_argument("--algorithm", choices=ALGORITHMS, default="lvx")
    run.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                     help="recompute K/V in backward instead of keeping them (default: on)")
    run.add_argument("--steps", type=_positive, default=3)
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    run.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--gate-init", type=float, default=0.1,
                     help="initial attention gate (Llama uses 0, which gives zero gradients at step 0)")
    run.add_argument("--seed", type=int, default=0, help="weight init seed (the same on every rank)")
    run.add_argument("--visual-split", type=_split_list, help="visual rows per rank, e.g. 100,100,56")
    run.add_argument("--text-split", type=_split_list, help="text rows per rank")
    run.add_argument("--threads", type=int, help="torch CPU threads per rank (default: torch's choice)")
    run.add_argument("--report", help="write a JSON report here (rank 0)")
    run.add_argument("--no-progress", action="store_true")
    return parser


# ---------------------------------------------------------------------------
# make-features


def make_features(args: argparse.Namespace) -> int:
    from . import data

    meta = data.write_synthetic(
        args.output, batch=args.batch, visual_len=args.visual_len, frames=args.frames,
        tokens_per_frame=args.tokens_per_frame, text_len=args.text_len, visual_dim=args.visual_dim,
        text_dim=args.text_dim, dtype=args.dtype, mask_style=args.mask, num_images=args.num_images,
        seed=args.seed, chunk_bytes=max(1, int(args.chunk_mb * 2**20)), progress=not args.no_progress)
    layout = (f"{meta.frames} frames x {meta.tokens_per_frame} tokens" if meta.frames_layout
              else f"{meta.visual_len} tokens")
    print(f"wrote {args.output}: batch {meta.batch}, visual {layout} x {meta.visual_dim}, "
          f"text {meta.text_len} x {meta.text_dim}, {args.dtype}, mask {args.mask}")
    return 0


# ---------------------------------------------------------------------------
# run: setup


def local_rank(comm) -> int:
    """This rank's index on its node: from the launcher's environment, else a shared-memory split."""
    for name in LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def pick_device(kind: str, comm):
    import torch

    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise RuntimeError("--device cuda but torch sees no CUDA device on this rank")
    device = torch.device("cuda", local_rank(comm) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


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


def check_core() -> None:
    import lvxattn

    if not hasattr(lvxattn, "cross_attention"):
        raise RuntimeError("lvxattn.cross_attention is unavailable: build the core first (pip install .)")


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
    available: bool = True

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
        import lvxattn

        self._last_stats = getattr(lvxattn, "last_stats", None)
        self.totals = AttentionTotals(available=self._last_stats is not None)
        self._pending_backward = 0
        for layer in model.layers:
            layer.register_forward_pre_hook(self._before_layer)
            layer.register_forward_hook(self._after_layer)

    def _read(self) -> dict | None:
        return self._last_stats() if self._last_stats is not None else None

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
        self.totals = AttentionTotals(available=self._last_stats is not None)
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


def summary_table(ranks: list[dict]) -> str:
    header = ("rank", "Lq", "Lkv", "step ms", "attn fwd ms", "attn bwd ms", "blocked ms",
              "sent MB", "recv MB", "saved MB", "peak MB")
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
        data.agree_on_errors(comm, check_core)
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
        losses = report["loss"]
        print(f"loss {losses[0]:.6g} -> {losses[-1]:.6g} over {len(losses)} steps; algorithm "
              f"{report['attention_algorithm'] or args.algorithm}, recompute {'on' if args.recompute else 'off'}, "
              f"{world} ranks, {device.type}, {args.dtype}")
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=2)
            print(f"report: {args.report}")
    return 0


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
        "attention": {"calls_per_step": last.calls, "forward": last.forward, "backward": last.backward,
                      "stats_available": last.available},
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


# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "make-features":
        from .data import FeatureFileError
        try:
            return make_features(args)
        except FeatureFileError as exc:
            print(f"lvxattn make-features: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    return run_job(args)
