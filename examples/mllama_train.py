"""Train a small random Llama 3.2 Vision (Mllama) on a long visual sequence sharded over ranks.

    mpirun -n 2 python examples/mllama_train.py      # CPU defaults: 45 s on 2 cores (8 steps of ~2 s)
    mpirun -n 4 python examples/mllama_train.py --device cuda --frames 256 --tokens-per-frame 1024 \\
        --hidden 1024 --heads 16 --kv-heads 4 --layers 20

The model is built from ``MllamaConfig`` with random weights (nothing is downloaded):
a text stack with a cross-attention layer at every fifth layer from layer 3, as in
Llama-3.2-11B-Vision, with grouped-query attention. The visual sequence stands for
a video after the vision encoder: ``--frames`` frames of ``--tokens-per-frame``
random features each, put through a trainable projector into the text model's
width. Each rank makes and holds only its contiguous piece of the visual tokens;
the text is on every rank. In Mllama's mask every frame is one image of one tile,
and each text row sees the frames before it (the first rows see none).

The cross-attention layers run through ``lvxattn.integrations.mllama.ShardedMllama``:
K/V stay on the rank that holds the visual tokens, and ``--recompute`` rebuilds
them from the visual states in backward. The model's gradients come out whole on
every rank; the projector's (fed by this rank's visual piece only) are summed
over the ranks here, as data-parallel training sums gradients. The task is to
predict a fixed random text, so the loss falls as the model learns it; the first
step's loss does not depend on the number of ranks.
"""

from __future__ import annotations

import argparse
import time

import torch
from mpi4py import MPI
from transformers import MllamaConfig, MllamaForConditionalGeneration
from transformers.utils import logging as hf_logging

import lvxattn
from lvxattn.data import even_counts
from lvxattn.integrations import mllama as lvx_mllama


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--layers", type=int, default=10, help="text layers (cross-attention at 3, 8, ...)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--text-len", type=int, default=256)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--tokens-per-frame", type=int, default=512)
    p.add_argument("--feature-dim", type=int, default=64, help="width of the (random) encoder features")
    p.add_argument("--lead", type=int, default=8, help="text rows before the first frame (they see none)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--algorithm", choices=lvxattn.ALGORITHMS, default="lvx")
    p.add_argument("--recompute", action="store_true", help="rebuild K/V from the visual states in backward")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def frame_features(args, frame: int, device) -> torch.Tensor:
    """Frame ``frame``'s encoder features ``[1, tokens_per_frame, feature_dim]``, the
    same on every rank whatever the split (one generator seed per frame)."""
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + frame)
    return torch.randn(1, args.tokens_per_frame, args.feature_dim, generator=gen).to(device)


def local_features(args, start: int, count: int, device) -> torch.Tensor:
    """Visual tokens ``[start, start + count)`` of the whole sequence, made frame by frame."""
    per = args.tokens_per_frame
    pieces = []
    for frame in range(start // per, (start + count + per - 1) // per):
        lo, hi = max(start, frame * per), min(start + count, (frame + 1) * per)
        pieces.append(frame_features(args, frame, device)[:, lo - frame * per:hi - frame * per])
    return torch.cat(pieces, dim=1) if pieces else torch.empty(1, 0, args.feature_dim, device=device)


def frame_mask(args) -> torch.Tensor:
    """Mllama's mask ``[1, text_len, frames, 1]``: after ``--lead`` rows, the text is
    spread evenly over the frames and each row sees every frame up to its own."""
    rows = torch.arange(args.text_len)
    seen = torch.where(rows < args.lead, 0, 1 + (rows - args.lead) * args.frames // max(args.text_len - args.lead, 1))
    frames = torch.arange(args.frames)
    return (frames[None, :] < seen[:, None].clamp(max=args.frames)).long()[None, :, :, None]


def build_model(args, device, dtype):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_global_layers=1,
                  attention_heads=2, image_size=8, patch_size=4, max_num_tiles=1, vision_output_dim=16,
                  intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]])
    text = dict(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                cross_attention_layers=lvx_mllama.cross_attention_layer_ids(args.layers),
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(args.seed)
    model = MllamaForConditionalGeneration(MllamaConfig(vision_config=vision, text_config=text))
    with torch.no_grad():   # open the gates a little so the visual tokens matter from the first step
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn_attn_gate"):
                layer.cross_attn_attn_gate.fill_(0.1)
                layer.cross_attn_mlp_gate.fill_(0.1)
    projector = torch.nn.Linear(args.feature_dim, args.hidden)
    return model.to(device, dtype), projector.to(device, dtype)


def main():
    args = parse_args()
    hf_logging.set_verbosity_error()   # a tiny vocabulary makes the config warn about special token ids
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    device = torch.device("cpu")
    if args.device == "cuda":
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    model, projector = build_model(args, device, dtype)
    sharded = lvx_mllama.ShardedMllama(model, comm, algorithm=args.algorithm, recompute_kv=args.recompute)
    params = list(model.parameters()) + list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    visual_len = args.frames * args.tokens_per_frame
    counts = even_counts(visual_len, size)
    start = sum(counts[:rank])
    features = local_features(args, start, counts[rank], device).to(dtype)
    gen = torch.Generator().manual_seed(args.seed + 1)
    text = torch.randint(3, args.vocab, (1, args.text_len), generator=gen).to(device)
    mask = frame_mask(args).to(device)
    if rank == 0:
        print(f"{size} rank(s), {device}, {args.dtype}: {visual_len} visual tokens ({args.frames} frames x "
              f"{args.tokens_per_frame}), {counts[0]} on rank 0; text {args.text_len}; {args.layers} layers, "
              f"cross-attention at {lvx_mllama.cross_attention_layer_ids(args.layers)}; "
              f"{sum(p.numel() for p in params) / 1e6:.1f} M parameters; {args.algorithm}, "
              f"recompute {'on' if args.recompute else 'off'}", flush=True)

    for step in range(args.steps):
        lvxattn.reset_stats()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        visual = projector(features)
        out = sharded(input_ids=text, cross_attention_states=visual, cross_attention_mask=mask, labels=text)
        out.loss.backward()
        for p in projector.parameters():   # fed by this rank's visual piece only: sum over ranks
            buf = p.grad.float().cpu().numpy()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            p.grad.copy_(torch.from_numpy(buf))
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_s = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        stats = lvxattn.total_stats()
        attn_s = comm.allreduce(sum(stats[ph]["total_s"] for ph in ("forward", "backward") if ph in stats),
                                op=MPI.MAX)
        sent = comm.allreduce(sum(stats[ph]["bytes_sent"] for ph in ("forward", "backward") if ph in stats))
        if rank == 0:
            print(f"step {step + 1}/{args.steps}  loss {out.loss.item():.4f}  step {step_s:.2f} s  "
                  f"cross-attention {attn_s:.2f} s  sent {sent / 2**20:.1f} MB (all ranks)", flush=True)
    sharded.remove()


if __name__ == "__main__":
    main()
