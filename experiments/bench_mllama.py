"""A training step of a Llama-3.2-11B-Vision-shaped text stack on a long visual sequence:
the model's own cross-attention against lvxattn (``lvxattn.integrations.mllama``).

    python experiments/bench_mllama.py                        # one GPU: sdpa vs lvx (trials stop after 240 s)
    mpirun -n 4 python experiments/bench_mllama.py            # several GPUs: lvx vs ring, same integration
    python experiments/bench_mllama.py --device cpu --tiny    # smoke test of the harness (~2 minutes on 2 busy cores)

Model: ``MllamaForCausalLM`` with ``MllamaTextConfig``'s defaults, which are the
Llama-3.2-11B-Vision checkpoint's text stack (hidden 4096, 32 query and 8 KV heads
of 128, MLP 14336, vocabulary 128256), random weights, bf16, with ``--layers``
layers (default 20 of the 40) and cross-attention at 3, 8, 13, ... (the model's
one layer in five). Visual input: ``--images`` images of one tile, ``Lkv /
images`` tokens each, random states of the text width (as after the projector),
with gradient (a trained projector needs it). Mask: every text row sees the images
before it (Mllama's ``cross_attention_mask``; the first rows see none). A step is
forward, the model's loss on the labels, and backward.

Methods: ``sdpa``, ``eager``: the unpatched model with that ``attn_implementation``,
the whole problem on one rank, its additive mask made as ``MllamaModel`` makes it
(one rank only). ``lvx``, ``ring``: the patched model (``ShardedMllama``, text on
every rank), the visual tokens split evenly over the ranks. A ``-recompute``
suffix rebuilds K/V from the visual states in backward.

Per method: the step time (median of ``--steps`` after ``--warmup``) and memory
at ``--visual-len`` global tokens, then the longest visual length that fits:
doubling from ``--start`` up to ``--max-len``, then bisection to
``--granularity``. A trial that runs out of memory does not fit; growth stops
when a trial takes longer than ``--trial-limit`` s; once the run passes
``--time-budget`` s no new trial starts (the result says so). Under MPI a
watchdog aborts the job if a trial hangs (a rank out of memory inside a collective).

Memory: the peak of torch's allocator (weights and gradients included; lvxattn's
own buffers, text-sized, live outside it) and the bytes autograd saved for
backward. On the CPU (``--device cpu``) a trial "fits" when saved bytes plus
twice the weights stay under ``--cpu-budget-mb``.

Output: a table, and one CSV row per method (device, date, git sha, config)
appended to ``--csv``.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Watchdog, is_oom, metadata, new_results_path, print_table, refuse_committed, write_csv  # noqa: E402

import lvxattn  # noqa: E402
from lvxattn.integrations import mllama as lvx_mllama  # noqa: E402
from lvxattn.devices import pick_device  # noqa: E402
from lvxattn.sharding import even_counts  # noqa: E402
from lvxattn.layers import measure_saved  # noqa: E402
from transformers import MllamaForCausalLM, MllamaTextConfig  # noqa: E402
from transformers.models.mllama import modeling_mllama as hf_mllama  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODEL_METHODS = ("sdpa", "eager")
LIBRARY_METHODS = ("lvx", "ring", "lvx-recompute", "ring-recompute")

# Defaults: (full, --tiny). The full ones aim at one H200 in about 5 minutes.
DEFAULTS = {
    "layers": (20, 5), "hidden": (None, 64), "heads": (None, 4), "kv_heads": (None, 2),
    "intermediate": (None, 128), "vocab": (None, 512), "text_len": (2048, 64), "images": (16, 8),
    "visual_len": (131072, 4096), "start": (262144, 2048), "max_len": (8388608, 65536),
    "granularity": (262144, 2048), "steps": (3, 2), "warmup": (1, 1),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (smoke test of the harness)")
    p.add_argument("--methods", default=None,
                   help=f"comma list of {MODEL_METHODS + LIBRARY_METHODS}; default: sdpa,lvx,lvx-recompute "
                        "on one rank, lvx,ring,lvx-recompute,ring-recompute on several")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 (fp32 with --tiny)")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int, help="default: MllamaTextConfig's (4096)")
    p.add_argument("--heads", type=int, help="default: MllamaTextConfig's (32)")
    p.add_argument("--kv-heads", type=int, help="default: MllamaTextConfig's (8)")
    p.add_argument("--intermediate", type=int, help="default: MllamaTextConfig's (14336)")
    p.add_argument("--vocab", type=int, help="default: MllamaTextConfig's (128256)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--text-len", type=int)
    p.add_argument("--images", type=int, help="images (one tile each) the visual tokens form")
    p.add_argument("--lead", type=int, default=16, help="text rows before the first image (they see none)")
    p.add_argument("--visual-len", type=int, help="global visual tokens of the timed steps")
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                   help="search the longest visual length each method fits")
    p.add_argument("--start", type=int, help="first global visual length of the search")
    p.add_argument("--max-len", type=int, help="upper bound of the search (global tokens)")
    p.add_argument("--granularity", type=int, help="bisect to this many global tokens")
    p.add_argument("--trial-limit", type=float, default=60.0, help="stop growing after a trial this slow (s)")
    p.add_argument("--time-budget", type=float, default=240.0, help="no new trial after this many s")
    p.add_argument("--cpu-budget-mb", type=float, default=64.0)
    p.add_argument("--csv", help="output CSV, appended to (default: a new file under experiments/results/new/)")
    args = p.parse_args(argv)
    column = 1 if args.tiny else 0
    for key, values in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[column])
    if args.dtype is None:
        args.dtype = "fp32" if args.tiny else "bf16"
    return args


def build_model(args, device) -> MllamaForCausalLM:
    overrides = {k: v for k, v in (("hidden_size", args.hidden), ("num_attention_heads", args.heads),
                                   ("num_key_value_heads", args.kv_heads), ("intermediate_size", args.intermediate),
                                   ("vocab_size", args.vocab)) if v is not None}
    if "vocab_size" in overrides:
        overrides.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = MllamaTextConfig(num_hidden_layers=args.layers,
                              cross_attention_layers=lvx_mllama.cross_attention_layer_ids(args.layers), **overrides)
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[args.dtype])
    try:
        with torch.device(device):
            model = MllamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    with torch.no_grad():   # open the gates: the model's own init closes them (tanh(0) = 0)
        for layer in model.model.layers:
            if hasattr(layer, "cross_attn_attn_gate"):
                layer.cross_attn_attn_gate.fill_(0.5)
                layer.cross_attn_mlp_gate.fill_(0.5)
    return model.train()


class Bench:
    def __init__(self, args, comm, device):
        self.args, self.comm, self.device = args, comm, device
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.dtype = DTYPES[args.dtype]
        self.model = build_model(args, device)
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.started = time.perf_counter()
        cfg = self.model.config
        gen = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, cfg.vocab_size, (args.batch, args.text_len), generator=gen).to(device)
        rows = torch.arange(args.text_len)
        seen = torch.where(rows < args.lead, 0,
                           1 + (rows - args.lead) * args.images // max(args.text_len - args.lead, 1))
        images = torch.arange(args.images)
        mask = (images[None, :] < seen[:, None].clamp(max=args.images)).long()
        self.mask = mask[None, :, :, None].expand(args.batch, -1, -1, 1).contiguous().to(device)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def step(self, method: str, sharded, visual_len: int):
        """One training step at ``visual_len`` global tokens: (seconds, peak bytes, saved bytes)."""
        a, dev, model = self.args, self.device, self.model
        counts = even_counts(visual_len, self.size)
        local = counts[self.rank] if sharded is not None else visual_len
        gen = torch.Generator(device=dev).manual_seed(2)
        visual = torch.randn(a.batch, local, model.config.hidden_size, generator=gen, device=dev, dtype=self.dtype)
        visual.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        with measure_saved(model) as meter:
            if sharded is None:
                # As MllamaModel.forward prepares Mllama's mask for its text model.
                additive, rows = hf_mllama._prepare_cross_attention_mask(
                    self.mask, num_vision_tokens=visual_len // a.images, dtype=self.dtype)
                out = model(input_ids=self.ids, cross_attention_states=visual, cross_attention_mask=additive,
                            full_text_row_masked_out_mask=rows, labels=self.ids, use_cache=False)
                del additive, rows
            else:
                out = sharded(input_ids=self.ids, cross_attention_states=visual, cross_attention_mask=self.mask,
                              labels=self.ids)
        out.loss.backward()
        del out, visual
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            peak = meter.bytes + 2 * self.weight_bytes
        return time.perf_counter() - start, peak, meter.bytes

    def trial(self, method: str, sharded, visual_len: int, repeats: int = 1, warmup: int = 0) -> dict:
        """``warmup + repeats`` steps, agreed over the ranks: fits, median seconds, peaks."""
        times, peak, saved, note = [], 0, 0, ""
        try:
            with Watchdog(self.comm, 4 * self.args.trial_limit * (warmup + repeats) + 120,
                          f"{method} at {visual_len} tokens"):
                for i in range(warmup + repeats):
                    s, p, m = self.step(method, sharded, visual_len)
                    if i >= warmup:
                        times.append(s)
                    peak, saved = max(peak, p), max(saved, m)
            if self.device.type == "cpu" and peak > self.args.cpu_budget_mb * 2**20:
                note = "over cpu budget"
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is an expected outcome
            if not is_oom(exc):
                raise
            note = "out of memory"
        finally:
            self.model.zero_grad(set_to_none=True)
            gc.collect()
            lvxattn.empty_cache()   # the library's buffers grow to the largest call: start each trial empty
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        fits = self.comm.allreduce(not note, op=MPI.LAND)
        notes = [n for n in self.comm.allgather(note) if n]
        if not fits:
            return {"fits": False, "note": notes[0] if notes else ""}
        return {"fits": True, "step_s": self.comm.allreduce(statistics.median(times), op=MPI.MAX),
                "peak_bytes": self.comm.allreduce(peak, op=MPI.MAX),
                "saved_bytes": self.comm.allreduce(saved, op=MPI.MAX), "note": ""}

    def search(self, method: str, sharded, report) -> tuple[int, str]:
        """Longest global visual length that fits (a multiple of the granularity) and why it stopped."""
        a = self.args
        gran = max(a.granularity // (a.images * self.size) * a.images * self.size, a.images * self.size)
        best, high, length, why = 0, None, max(gran, a.start // gran * gran), "upper bound"
        while True:
            if self.elapsed() > a.time_budget:
                return best, "time budget"
            t0 = time.perf_counter()
            t = self.trial(method, sharded, length)
            took = self.comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            report(method, length, t)
            if not t["fits"]:
                high, why = length, t["note"]
                break
            best = length
            if length >= a.max_len:
                break
            if took > a.trial_limit:
                return best, f"trial over {a.trial_limit:.0f} s"
            length = min(2 * length, a.max_len // gran * gran)
        while high is not None and high - best > gran:
            if self.elapsed() > a.time_budget:
                return best, f"{why}; time budget"
            mid = (best + high) // 2 // gran * gran
            t = self.trial(method, sharded, mid)
            report(method, mid, t)
            if t["fits"]:
                best = mid
            else:
                high = mid
        return best, why


def main(argv=None) -> int:
    args = parse_args(argv)
    # Out of memory inside the library is an expected outcome here: raise it (on every
    # rank alike, equal shapes) instead of ending the job.
    os.environ.setdefault("LVX_ON_ERROR", "raise")
    hf_logging.set_verbosity_error()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    device = pick_device(args.device, comm)
    args.csv = args.csv or comm.bcast(new_results_path("bench_mllama") if comm.rank == 0 else None, root=0)
    refuse_committed(args.csv)   # on every rank, before any collective
    methods = (args.methods or ("sdpa,lvx,lvx-recompute" if size == 1 else
                                "lvx,ring,lvx-recompute,ring-recompute")).split(",")
    for m in methods:
        if m not in MODEL_METHODS + LIBRARY_METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {MODEL_METHODS + LIBRARY_METHODS}")
    if size > 1 and any(m in MODEL_METHODS for m in methods):
        raise SystemExit("the model's own attention runs on one rank: leave sdpa/eager out under mpirun")

    bench = Bench(args, comm, device)
    cfg = bench.model.config
    visual_len = max(args.visual_len // (args.images * size), 1) * args.images * size
    meta = metadata(device.type)
    common = {**meta, "ranks": size, "layers": args.layers, "cross_layers": len(cfg.cross_attention_layers),
              "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
              "head_dim": cfg.hidden_size // cfg.num_attention_heads, "intermediate": cfg.intermediate_size,
              "vocab": cfg.vocab_size, "dtype": args.dtype, "batch": args.batch, "text_len": args.text_len,
              "images": args.images, "transformers": __import__("transformers").__version__}
    if rank == 0:
        print(f"{meta['device']} x{size}, {meta['git_sha']}: {args.layers} layers (cross-attention at "
              f"{cfg.cross_attention_layers}), hidden {cfg.hidden_size}, {cfg.num_attention_heads}/"
              f"{cfg.num_key_value_heads} heads, {bench.weight_bytes / 2**30:.2f} GiB of weights, "
              f"text {args.text_len}, {args.images} images", flush=True)

    def report(method, length, t):
        if rank == 0:
            state = (f"fits, {t['step_s']:.3f} s, peak {t['peak_bytes'] / 2**20:.0f} MB" if t["fits"]
                     else f"does not fit ({t['note']})")
            print(f"  {method:>15} at {length:>9} visual tokens: {state}  [{bench.elapsed():.0f} s]", flush=True)

    rows = []
    for method in methods:
        sharded = None
        if method in MODEL_METHODS:
            bench.model.set_attn_implementation(method)
        else:
            algorithm, _, recompute = method.partition("-")
            sharded = lvx_mllama.ShardedMllama(bench.model, comm, algorithm=algorithm, recompute_kv=bool(recompute))
        timed = bench.trial(method, sharded, visual_len, repeats=args.steps, warmup=args.warmup)
        report(method, visual_len, timed)
        longest, why = (None, "not searched")
        if args.search:
            longest, why = bench.search(method, sharded, report)
        if sharded is not None:
            sharded.remove()
        mb = (lambda b: round(b / 2**20, 1))
        rows.append({**common, "method": method, "visual_len": visual_len,
                     "step_s": round(timed["step_s"], 4) if timed["fits"] else None,
                     "peak_mb": mb(timed["peak_bytes"]) if timed["fits"] else None,
                     "saved_mb": mb(timed["saved_bytes"]) if timed["fits"] else None,
                     "note": timed["note"], "max_visual_len": longest, "search_stop": why,
                     "search_granularity": args.granularity, "search_upper_bound": args.max_len})

    if rank == 0:
        print()
        print_table(rows, ["method", "ranks", "visual_len", "step_s", "peak_mb", "saved_mb", "max_visual_len",
                           "search_stop"])
        write_csv(args.csv, rows)
        print(f"csv: {args.csv}  ({bench.elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
