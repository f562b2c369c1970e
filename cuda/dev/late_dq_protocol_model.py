"""Host model of the late-dQ protocol of the sm_90a backward (attend_bwd_sm90.cuh,
the kernel's kLate): two consumer warpgroups, each tile's dSᵀ in buffer t % 2, one-way
signals ds_ready(w, t % 2) as named barriers (bar.arrive by warpgroup w, bar.sync by the
other; a phase completes when two of the 128-thread groups have arrived), a KV block's last
dQ flushed after its loop. Random interleavings of the two warpgroups over random KV-block
sizes; checks that nothing deadlocks, that every barrier phase joins warpgroup w's arrival
for tile t with the other's wait for the same t, and that a dSᵀ buffer is written again only
after both warpgroups' dQ has read it. With --turns, each warpgroup also issues its two
GEMM bursts per tile (dPᵀ and dV; dK, the late dQ and the next Sᵀ) between bar.sync on its
own turn barrier and bar.arrive on the other's (BwdSm90::kTurns): warpgroup 1 arrives once
ahead, warpgroup 0 waits once more at the end.

usage: python cuda/dev/late_dq_protocol_model.py [--cases 2000] [--seed 1] [--turns]
"""
from __future__ import annotations

import argparse
import random


TURN = -1  # the tile field of a turn barrier's operations


def program(w: int, blocks: list[int], turns: bool = False):
    """Warpgroup w's actions: ('write', t), ('sync', other, t), ('read', t), ('arrive', w, t);
    turn barriers as ('tsync', w, TURN) and ('tarrive', other, TURN)."""
    other = 1 - w
    t = 0
    ops = []

    def burst():
        if turns:
            ops.append(("tsync", w, TURN))
            ops.append(("tarrive", other, TURN))

    if turns and w == 1:
        ops.append(("tarrive", 0, TURN))  # warpgroup 0 goes first
    for n in blocks:
        pending = False
        for _ in range(n):
            burst()  # dPᵀ, dV
            if pending:
                ops.append(("sync", other, t - 1))
            ops.append(("write", t))
            burst()  # dK, the late dQ, the next Sᵀ
            if pending:
                ops.append(("read", t - 1))
            ops.append(("arrive", w, t))
            pending = True
            t += 1
        if pending:  # the KV block's last dQ
            ops.append(("sync", other, t - 1))
            ops.append(("read", t - 1))
    if turns and w == 0:
        ops.append(("tsync", 0, TURN))  # warpgroup 1's last pass
    return ops


def run(blocks: list[int], rng: random.Random, turns: bool = False) -> str | None:
    progs = [program(0, blocks, turns), program(1, blocks, turns)]
    pc = [0, 0]
    # barrier (owner, parity): list of (kind, tile) of the current phase; waiters blocked
    phase: dict[tuple[int, int], list[tuple[str, int]]] = {}
    blocked = [None, None]  # the barrier a warpgroup waits on
    released: set[tuple[int, int, int]] = set()  # (owner, parity, tile) phases completed with a wait
    reads = {}  # tile -> set of warpgroups whose dQ read its buffer
    for _ in range(10 ** 6):
        runnable = [w for w in (0, 1) if pc[w] < len(progs[w]) and blocked[w] is None]
        if not runnable:
            if all(pc[w] == len(progs[w]) for w in (0, 1)):
                leftover = {k: v for k, v in phase.items() if v}
                return f"barrier phases left open: {leftover}" if leftover else None
            return f"deadlock at {[progs[w][pc[w]] if pc[w] < len(progs[w]) else 'end' for w in (0, 1)]}"
        w = rng.choice(runnable)
        op = progs[w][pc[w]]
        pc[w] += 1
        if op[0] == "write":
            t = op[1]
            if t >= 2 and reads.get(t - 2, set()) != {0, 1}:
                return f"warpgroup {w} writes buffer {t % 2} (tile {t}) before both dQ read tile {t - 2}"
        elif op[0] == "read":
            reads.setdefault(op[1], set()).add(w)
        elif op[0] in ("arrive", "sync", "tarrive", "tsync"):
            owner, t = op[1], op[2]
            key = (owner, t % 2) if t != TURN else ("turn", owner)
            members = phase.setdefault(key, [])
            members.append((op[0].lstrip("t"), t))
            if op[0] in ("sync", "tsync"):
                blocked[w] = key
            if len(members) == 2:  # the phase completes
                kinds = sorted(k for k, _ in members)
                tiles = {x for _, x in members}
                if kinds != ["arrive", "sync"] or len(tiles) != 1:
                    return f"barrier {key} completed with {members}"
                released.add((owner, t, tiles.pop()))
                phase[key] = []
                for v in (0, 1):
                    if blocked[v] == key:
                        blocked[v] = None
    return "no end"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--turns", action="store_true", help="with the turn barriers around the GEMM bursts")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    for case in range(args.cases):
        blocks = [rng.randint(1, 6) for _ in range(rng.randint(1, 5))]
        err = run(blocks, rng, args.turns)
        if err:
            raise SystemExit(f"case {case}, KV blocks of {blocks} tiles: {err}")
    print(f"{args.cases} random cases{' with turns' if args.turns else ''}: no deadlock, every phase pairs an arrival and a wait for one tile, "
          "no dSᵀ buffer written before both dQ read it")


if __name__ == "__main__":
    main()
