"""Largest visual length per GPU that fits a training step, K/V recompute on vs off.

A stack like Llama 3.2 Vision's cross-attention layers (defaults: 8 layers, hidden
4096, Hq=32, Hkv=8, D=128, bf16). For each mode the script grows the visual length
per rank until a forward+backward step runs out of memory, then bisects to
``--granularity`` tokens. Run it on 1 GPU and on 4:

    python experiments/bench_recompute.py
    mpirun -n 4 python experiments/bench_recompute.py        # or: srun -n 4 --gpus-per-task 1 ...

It prints a table and appends one CSV row per mode (device, date, git sha) to
``--csv``; every trial goes to ``--trials-csv`` as it finishes, so a job killed
mid-search keeps what it measured. An out-of-memory on one rank inside a collective
can leave the others waiting: a watchdog aborts the job after ``--trial-timeout``.

``--device cpu`` exists to try the harness on small dims: there "fits" means the
saved activations plus weights and gradients stay under ``--cpu-budget-mb``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
from mpi4py import MPI

import lvxattn
from lvxattn import data, devices, masks
from lvxattn.cli import ALGORITHMS
from lvxattn.layers import CrossAttentionStack, measure_saved

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Watchdog, git_sha, is_oom, new_results_path, refuse_committed, write_csv  # noqa: E402
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Trial:
    mode: str
    visual_len_per_rank: int
    fits: bool
    step_s: float | None
    peak_bytes: int | None        # max over ranks: torch allocator peak (cuda) or modelled bytes (cpu)
    saved_activation_bytes: int | None
    note: str = ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--visual-dim", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int, default=2048, help="global text length")
    p.add_argument("--mask", choices=("none",) + masks.STYLES, default="all_previous")
    p.add_argument("--images", type=int, default=8, help="images the visual tokens form (for the mask)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="lvx")
    p.add_argument("--modes", default="recompute,no-recompute")
    p.add_argument("--visual-grad", action=argparse.BooleanOptionalAction, default=True,
                   help="also compute the gradient of the visual features (encoder is trained)")
    p.add_argument("--start", type=int, default=65536, help="first visual length per rank to try")
    p.add_argument("--granularity", type=int, default=4096, help="bisect to this many tokens per rank")
    p.add_argument("--max-len", type=int, default=1 << 24, help="stop growing at this length per rank")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--cpu-budget-mb", type=float, default=256.0)
    p.add_argument("--trial-timeout", type=float, default=900.0, help="seconds before the watchdog aborts")
    p.add_argument("--csv", help="summary rows (default: a new file under experiments/results/new/)")
    p.add_argument("--trials-csv", help="one row per trial (default: <--csv without .csv>_trials.csv)")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args, comm, device):
        self.args, self.comm, self.device = args, comm, device
        self.dtype = DTYPES[args.dtype]
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.text_counts = data.even_counts(args.text_len, self.size)
        self.text_offset = sum(self.text_counts[:self.rank])

    def build(self, recompute: bool) -> CrossAttentionStack:
        a = self.args
        torch.manual_seed(0)
        model = CrossAttentionStack(a.layers, a.text_dim, a.visual_dim, a.heads, a.kv_heads, a.head_dim,
                                    recompute=recompute, comm=self.comm, algorithm=a.algorithm,
                                    gate_init=0.1, dtype=self.dtype, device=self.device)
        return model

    def step(self, model, visual_len: int) -> tuple[float, int, int]:
        """One forward+backward with ``visual_len`` visual rows on every rank."""
        a, dev = self.args, self.device
        lq = self.text_counts[self.rank]
        text = torch.randn(a.batch, lq, a.text_dim, device=dev, dtype=self.dtype)
        visual = torch.randn(a.batch, visual_len, a.visual_dim, device=dev, dtype=self.dtype)
        visual.requires_grad_(a.visual_grad)
        q_ranges = None
        if a.mask != "none":
            full = masks.interleaved_ranges(a.batch, a.text_len, visual_len * self.size,
                                            min(a.images, visual_len * self.size), a.mask)
            q_ranges = full[:, self.text_offset:self.text_offset + lq].contiguous().to(dev)
        model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        with measure_saved(model) as meter:
            out = model(text, visual, q_ranges)
        out.float().pow(2).mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            peak = meter.bytes + 2 * weights
        return time.perf_counter() - start, peak, meter.bytes

    def trial(self, model, mode: str, visual_len: int) -> Trial:
        result, note = None, ""
        try:
            with Watchdog(self.comm, self.args.trial_timeout, f"{mode} at {visual_len} tokens/rank"):
                result = self.step(model, visual_len)
                if self.device.type == "cpu" and result[1] > self.args.cpu_budget_mb * 2**20:
                    result, note = None, "over cpu budget"
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is an expected outcome
            if not is_oom(exc):
                raise
            note = "out of memory"
        finally:
            model.zero_grad(set_to_none=True)
            gc.collect()
            # The library's own buffers grow to the largest trial so far: free them so a
            # trial (and the next mode) starts from the same empty device.
            lvxattn.empty_cache()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        fits = self.comm.allreduce(result is not None, op=MPI.LAND)
        notes = [n for n in self.comm.allgather(note) if n]
        if not fits:
            return Trial(mode, visual_len, False, None, None, None, notes[0] if notes else "")
        step_s = self.comm.allreduce(result[0], op=MPI.MAX)
        peak = self.comm.allreduce(result[1], op=MPI.MAX)
        saved = self.comm.allreduce(result[2], op=MPI.MAX)
        return Trial(mode, visual_len, True, step_s, peak, saved)

    def search(self, mode: str, on_trial) -> Trial | None:
        """Largest length per rank (a multiple of the granularity) whose step fits."""
        a = self.args
        model = self.build(recompute=(mode == "recompute"))
        gran = a.granularity
        best, low, high = None, 0, None
        length = max(gran, a.start // gran * gran)
        while high is None:
            t = self.trial(model, mode, length)
            on_trial(t)
            if t.fits:
                best, low = t, length
                if length >= a.max_len:
                    break
                length = min(2 * length, a.max_len // gran * gran)
            else:
                high = length
        while high is not None and high - low > gran:
            mid = (low + high) // 2 // gran * gran
            t = self.trial(model, mode, mid)
            on_trial(t)
            if t.fits:
                best, low = t, mid
            else:
                high = mid
        del model
        gc.collect()
        lvxattn.empty_cache()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return best


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return platform.processor() or platform.machine() or "cpu"


def main(argv=None) -> int:
    args = parse_args(argv)
    # An out-of-memory inside the library is an expected outcome here: raise it on
    # every rank (equal shapes fail alike) instead of ending the job.
    os.environ.setdefault("LVX_ON_ERROR", "raise")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    device = devices.pick_device(args.device, comm)
    args.csv = args.csv or new_results_path("bench_recompute")
    args.trials_csv = args.trials_csv or os.path.splitext(args.csv)[0] + "_trials.csv"
    refuse_committed(args.csv)   # on every rank, before any collective
    refuse_committed(args.trials_csv)
    bench = Bench(args, comm, device)
    common = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(), "device": device_name(device), "gpus": size if device.type == "cuda" else 0,
        "ranks": size, "layers": args.layers, "text_dim": args.text_dim, "visual_dim": args.visual_dim,
        "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": args.dtype,
        "batch": args.batch, "text_len": args.text_len, "mask": args.mask, "algorithm": args.algorithm,
        "visual_grad": args.visual_grad,
        "device_memory_mb": (round(torch.cuda.get_device_properties(device).total_memory / 2**20)
                             if device.type == "cuda" else args.cpu_budget_mb),
    }

    def on_trial(t: Trial) -> None:
        if rank == 0:
            state = "fits" if t.fits else f"does not fit ({t.note})"
            print(f"  {t.mode:>13}: {t.visual_len_per_rank:>9} tokens/rank {state}", flush=True)
            write_csv(args.trials_csv, [{**common, **asdict(t)}])

    results = {}
    for mode in args.modes.split(","):
        if rank == 0:
            print(f"searching {mode} ({size} ranks, {common['device']})", flush=True)
        results[mode] = bench.search(mode, on_trial)

    if rank == 0:
        base = results.get("no-recompute")
        header = ("mode", "ranks", "max Lkv/rank", "max Lkv total", "peak MB", "saved MB", "step s", "vs no-recompute")
        rows = []
        for mode, best in results.items():
            length = best.visual_len_per_rank if best else 0
            ratio = f"{length / base.visual_len_per_rank:.2f}x" if base and best else "n/a"
            row = {**common, "mode": mode, "max_visual_len_per_rank": length,
                   "max_visual_len_total": length * size,
                   "peak_mb": round(best.peak_bytes / 2**20, 1) if best else None,
                   "saved_activation_mb": round(best.saved_activation_bytes / 2**20, 1) if best else None,
                   "step_s": round(best.step_s, 4) if best else None, "ratio_vs_no_recompute": ratio,
                   "granularity": args.granularity}
            write_csv(args.csv, [row])
            rows.append((mode, str(size), str(length), str(length * size), str(row["peak_mb"]),
                         str(row["saved_activation_mb"]), str(row["step_s"]), ratio))
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        print(f"csv: {args.csv} (trials: {args.trials_csv})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
