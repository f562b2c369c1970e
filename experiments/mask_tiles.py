"""How the sm_90a kernels classify their tiles under a q_ranges mask: a host model of the
tile walk of cuda/attend_fwd_sm90.cuh and cuda/attend_bwd_sm90.cuh (the same integer
rules, no timing), for the masks of experiments/bench_ab.py.

Forward (one block per 128 query rows; KV tiles of 128 rows from the block's lowest
visible KV row ``lo`` up to its highest ``hi``; tiles outside are skipped):
  whole      every row of the block sees the tile whole: no mask, nothing to fix;
  straddling some row sees part of the tile (an interval edge inside it);
  all/none   every row sees all of the tile or none of it, not all rows all of it;
  masked     scores masked (need_mask), fixed (the producer zeroes V rows no row sees and
             scans the V rows only some rows see for NaN/±Inf before the consumers take
             the tile: needs_fix). Both are decided from the block's [full_lo, full_hi)
             (KV rows every row sees), so a tile is fixed when it is masked, save the
             last tile of a shard whose end every row sees.
Backward (one block per 128 KV rows; the items are the query tiles of block_m rows):
  visible    some row of the tile sees some KV row of the block (others are skipped);
  whole      every row sees every KV row of the block;
  qfix       the rest: Q/dO rows that see none of the block are zeroed, rows that see part
             of it (straddling rows) are scanned; rows that see all of it need nothing.

usage: python experiments/mask_tiles.py [--shape 1,16,16,1024,65536,128] [--mask latest5]
       [--csv out.csv]; masks: latest5, prev5, random (bench_ab.py's, built by it; needs torch)
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

# cuda/attend_config.hpp (kSm90Fwd / kSm90Bwd): head dim -> (block_m, block_n)
FWD_TILE = {64: (128, 128), 96: (128, 128), 128: (128, 128)}
BWD_TILE = {64: (128, 128), 96: (64, 128), 128: (64, 128)}


def mask_ranges(kind: str, Lq: int, Lkv: int):
    """[(begin, end)] per query row: the mask bench_ab.py times (batch 0)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_ab import mask_ranges as bench_mask  # noqa: E402 (the same masks, bit for bit)
    return [tuple(r) for r in bench_mask(kind, 1, Lq, Lkv, "cpu")[0].tolist()]


def fwd_blocks(iv, Lkv: int, BM: int, BN: int):
    """Per query block: the kernel's range and its tile classes (split-KV off)."""
    rows_all, out = len(iv), []
    for m0 in range(0, rows_all, BM):
        rows = iv[m0:m0 + BM]
        seen = [(b, e) for b, e in rows if e > b]
        lo, hi = (min(b for b, _ in seen), max(e for _, e in seen)) if seen else (0, 0)
        full_lo, full_hi = max(b for b, _ in rows), min(e for _, e in rows)
        all_lo, all_hi = full_lo, min(full_hi, hi)
        n_tiles = (hi - lo + BN - 1) // BN if hi > lo else 0
        c = dict(block=m0 // BM, lo=lo, hi=hi, tiles=n_tiles, skipped=(Lkv + BN - 1) // BN - n_tiles,
                 whole=0, straddling=0, all_none=0, masked=0, fixed=0, v_zeroed=0, v_scanned=0)
        for j in range(n_tiles):
            n0 = lo + j * BN
            t_hi = min(n0 + BN, hi)
            need_mask = n0 < full_lo or n0 + BN > min(full_hi, hi)
            needs_fix = n0 < all_lo or min(n0 + BN, Lkv) > all_hi
            kinds = set()
            for b, e in rows:
                k = max(0, min(e, t_hi) - max(b, n0))
                kinds.add("all" if k == t_hi - n0 else "none" if k == 0 else "part")
            if not need_mask:
                c["whole"] += 1
            elif "part" in kinds:
                c["straddling"] += 1
            elif "none" in kinds:
                c["all_none"] += 1
            c["masked"] += need_mask
            c["fixed"] += needs_fix
            if needs_fix:
                for col in range(n0, min(n0 + BN, Lkv)):
                    if all_lo <= col < all_hi:
                        continue
                    if any(b <= col < min(e, hi) for b, e in rows):
                        c["v_scanned"] += 1
                    else:
                        c["v_zeroed"] += 1
        out.append(c)
    return out


def fwd_time_ms(blocks, heads: int, t_whole: float, t_masked: float, t_fixed: float, sms: int = 132) -> float:
    """Forward kernel time (ms) of a per-tile cost model: each block costs its tiles (us per
    tile: whole, masked and not fixed, fixed); blocks (query block fastest, then head, as
    the grid is laid out) go to the first free SM."""
    cost = [c["whole"] * t_whole + (c["masked"] - c["fixed"]) * t_masked + c["fixed"] * t_fixed for c in blocks]
    free = [0.0] * sms
    for _ in range(heads):
        for x in cost:
            i = min(range(sms), key=free.__getitem__)
            free[i] += x
    return max(free) / 1e3


def bwd_blocks(iv, Lkv: int, BM: int, BN: int):
    """Per KV block: its query-tile items by class (one query head per KV head)."""
    out = []
    for n0 in range(0, Lkv, BN):
        kv_hi = min(Lkv, n0 + BN)
        c = dict(block=n0 // BN, items=0, visible=0, whole=0, qfix=0, q_zeroed=0, q_scanned=0, before_first=0)
        first = None
        for q0 in range(0, len(iv), BM):
            rows = iv[q0:q0 + BM]
            c["items"] += 1
            if not any(b < kv_hi and e > n0 and e > b for b, e in rows):
                continue
            first = q0 // BM if first is None else first
            c["visible"] += 1
            all_lo, all_hi = max(b for b, _ in rows), min(e for _, e in rows)
            if kv_hi - n0 == BN and all_lo <= n0 and all_hi >= kv_hi:
                c["whole"] += 1
            if not (all_lo <= n0 and all_hi >= kv_hi):
                c["qfix"] += 1
                for b, e in rows:
                    if b <= n0 and e >= kv_hi:
                        continue
                    if b < kv_hi and e > n0 and e > b:
                        c["q_scanned"] += 2  # the Q row and the dO row
                    else:
                        c["q_zeroed"] += 2
        c["before_first"] = first if first is not None else c["items"]
        out.append(c)
    return out


def bwd_time_ms(blocks, heads: int, t_block: float, t_whole: float, t_masked: float, sms: int = 132) -> float:
    """Backward kernel time (ms) of a per-block cost model: each KV block costs t_block
    (K/V loads, the item walk, dK/dV out) plus its visible query tiles (us per tile: every
    row sees the block whole, masked); blocks (KV block fastest, then head, as the grid is
    laid out) go to the first free SM."""
    cost = [t_block + c["whole"] * t_whole + (c["visible"] - c["whole"]) * t_masked for c in blocks]
    free = [0.0] * sms
    for _ in range(heads):
        for x in cost:
            i = min(range(sms), key=free.__getitem__)
            free[i] += x
    return max(free) / 1e3


# Backward per-block models (us: per block, per whole tile, per masked tile), least-squares
# fits of one H200 A/B run (experiments/results/gpu_kernels_ab_h200_e50204f_vs_b3c9021_
# 2026-11-29.csv: backward kernel time = fwd+bwd kernels - fwd kernels, public call, 16/16,
# D = 128, unmasked 1024 x 16384 and 1024 x 65536 'random', 'latest5', 'prev5'; 62.06 KV
# blocks per SM at 65536, 15.52 at 16384). e50204f fits its four times to 0.1%; at b3c9021
# a masked tile is also one whose Q/dO rows are fixed (every masked tile of the three masks
# is), and the fit is within 4%.
BWD_FIT = {"e50204f": (14.72, 2.722, 2.498), "b3c9021": (18.42, 2.072, 3.399)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1,16,16,1024,65536,128", help="B,Hq,Hkv,Lq,Lkv,D")
    ap.add_argument("--mask", default="latest5", help="latest5, prev5 or random (bench_ab.py's masks)")
    ap.add_argument("--csv", help="write the per-block rows here")
    ap.add_argument("--t-whole", type=float, default=1.94, help="model: us per tile every row sees whole")
    ap.add_argument("--t-masked", type=float, default=2.29, help="model: us per masked tile, no fix")
    ap.add_argument("--t-fixed", type=float, default=4.64, help="model: us per fixed tile at b930ad4")
    ap.add_argument("--bwd-t-masked", type=float, nargs=3, default=(2.07, 2.50, 2.80), metavar=("LOW", "MID", "HIGH"),
                    help="backward model, this tree: us per masked tile (t_block and t_whole as at b3c9021)")
    ap.add_argument("--fix-overhead", type=float, default=0.04,
                    help="model: a fixed tile's extra cost over a masked one in this tree (fraction)")
    a = ap.parse_args()
    B, Hq, Hkv, Lq, Lkv, D = (int(x) for x in a.shape.split(","))
    iv = mask_ranges(a.mask, Lq, Lkv)
    fbm, fbn = FWD_TILE[D]
    bbm, bbn = BWD_TILE[D]
    fwd = fwd_blocks(iv, Lkv, fbm, fbn)
    print(f"mask {a.mask}, Lq={Lq}, Lkv={Lkv}, D={D}; forward {fbm}x{fbn} tiles, backward {bbm}-row query tiles "
          f"x {bbn} KV rows; {B * Hq} (batch, head) pairs")
    print("\nforward, per query block:")
    keys = ["lo", "hi", "tiles", "skipped", "whole", "straddling", "all_none", "masked", "fixed", "v_zeroed", "v_scanned"]
    print(f"{'block':>5} " + " ".join(f"{k:>10}" for k in keys))
    for c in fwd:
        print(f"{c['block']:>5} " + " ".join(f"{c[k]:>10}" for k in keys))
    tot = {k: sum(c[k] for c in fwd) for k in keys[2:]}
    print("total " + " " * 22 + " ".join(f"{tot[k]:>10}" for k in keys[2:]))
    worst = max(fwd, key=lambda c: c["tiles"])
    print(f"largest block: {worst['tiles']} tiles ({worst['masked']} masked, {worst['fixed']} fixed, "
          f"{worst['straddling']} straddling); unmasked blocks have {(Lkv + fbn - 1) // fbn}")

    # Per-tile costs (us) from one H200 run (experiments/results: ab.csv of b930ad4 against
    # e50204f): 1024 x 16384 unmasked 0.248 ms over 128 tiles per block; 'latest5' 0.470 ms
    # (e50204f) and 0.951 ms (b930ad4) over its largest block's 205 masked tiles.
    t_whole, t_masked, t_fix_main = a.t_whole, a.t_masked, a.t_fixed
    t_fix_new = t_masked * (1 + a.fix_overhead)
    print(f"model (us per tile: whole {t_whole}, masked {t_masked}; fixed: e50204f {t_masked} (no fix), "
          f"b930ad4 {t_fix_main}, this tree {t_fix_new:.2f}): forward kernel "
          f"{fwd_time_ms(fwd, B * Hq, t_whole, t_masked, t_masked):.3f} / "
          f"{fwd_time_ms(fwd, B * Hq, t_whole, t_masked, t_fix_main):.3f} / "
          f"{fwd_time_ms(fwd, B * Hq, t_whole, t_masked, t_fix_new):.3f} ms")

    bwd = bwd_blocks(iv, Lkv, bbm, bbn)
    bkeys = ["items", "visible", "whole", "qfix", "q_zeroed", "q_scanned", "before_first"]
    hist: dict = {}
    for c in bwd:
        sig = tuple(c[k] for k in bkeys)
        hist[sig] = hist.get(sig, 0) + 1
    print("\nbackward, KV blocks by class (count: " + ", ".join(bkeys) + "):")
    ranked = sorted(hist.items(), key=lambda kv: -kv[1])
    for sig, n in ranked[:8]:
        print(f"  {n:>6} x " + ", ".join(f"{k}={v}" for k, v in zip(bkeys, sig)))
    if len(ranked) > 8:
        print(f"  ... {len(ranked) - 8} more classes, {sum(n for _, n in ranked[8:])} blocks")
    n = len(bwd)
    print(f"per KV block (mean): visible {sum(c['visible'] for c in bwd) / n:.2f}, "
          f"whole {sum(c['whole'] for c in bwd) / n:.2f}, qfix {sum(c['qfix'] for c in bwd) / n:.2f}, "
          f"items searched before the first visible {sum(c['before_first'] for c in bwd) / n:.2f}")

    heads = B * Hq
    fits = ", ".join(f"{k} {bwd_time_ms(bwd, heads, *v):.3f}" for k, v in BWD_FIT.items())
    t_block, t_whole, _ = BWD_FIT["b3c9021"]
    this = " / ".join(f"{bwd_time_ms(bwd, heads, t_block, t_whole, t):.3f}" for t in a.bwd_t_masked)
    print(f"backward kernel, per-block model (ms): {fits}; this tree (masked tile "
          f"{' / '.join(str(t) for t in a.bwd_t_masked)} us) {this}")

    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["direction", "mask", "Lq", "Lkv", "D", "block"] + keys + bkeys)
            for c in fwd:
                w.writerow(["fwd", a.mask, Lq, Lkv, D, c["block"]] + [c[k] for k in keys] + [""] * len(bkeys))
            for c in bwd:
                w.writerow(["bwd", a.mask, Lq, Lkv, D, c["block"]] + [""] * len(keys) + [c[k] for k in bkeys])
        print(f"wrote {a.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
