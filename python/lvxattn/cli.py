"""Command line: ``python -m lvxattn`` (or the ``lvxattn`` script next to the venv's python).

``make-features``  write a synthetic HDF5 feature file (one process)
``run``            the main job, under mpirun/srun: train a stack of cross-attention layers
                   (``lvxattn.train``)
``info``           what this installation was built with, and whether it fits the machine

Argument errors end every rank with exit code 2 and are printed by the first rank
only (each rank parses its own command line, before MPI starts).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Sequence

EXIT_BAD_INPUT = 2
ALGORITHMS = ("lvx", "ring", "ulysses", "auto")
# The launcher's rank of this process, read without starting MPI.
_WORLD_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    for name in _WORLD_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Formatter(argparse.HelpFormatter):
    """Shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or "default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors printed by one rank only.

    Every rank parses the same command line, so the first one reports the error and
    carries the job's exit status (EXIT_BAD_INPUT); the others leave quietly with 0. A
    launcher ends the whole job at the first rank that exits non-zero, which could cut
    the first rank off before its message is out (seen with Open MPI 5's prterun)."""

    def error(self, message):
        if launcher_rank() != 0:
            sys.exit(0)
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.stderr.flush()
        sys.exit(EXIT_BAD_INPUT)


def _split_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def program_name() -> str:
    """How the user started us: the ``lvxattn`` script, else ``python -m lvxattn``."""
    return "lvxattn" if os.path.basename(sys.argv[0] if sys.argv else "") == "lvxattn" else "python -m lvxattn"


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser by name."""
    from . import data

    prog = program_name()
    parser = _Parser(prog=prog, formatter_class=_Formatter,
                     description="Exact distributed cross-attention over long visual inputs.",
                     epilog=f"Run `{prog} COMMAND --help` for a command's options. "
                            f"Distributed runs: mpirun -n 4 {prog} run ... "
                            "(add --oversubscribe where there are fewer cores than ranks).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{make-features,run,info}",
                                     parser_class=_Parser)
    subs = {}

    make = subs["make-features"] = commands.add_parser(
        "make-features", help="write a synthetic HDF5 feature file (one process)", formatter_class=_Formatter,
        description="Write a synthetic HDF5 feature file: standard-normal visual and text features and, "
                    "unless --mask none, a q_ranges mask (see docs/DESIGN.md, HDF5 feature files).")
    make.add_argument("output", help="path of the .h5 file to write")
    make.add_argument("--batch", type=_positive, default=1, help="samples B")
    make.add_argument("--visual-len", type=_positive, help="visual tokens, stored [B, Lkv, Dv]")
    make.add_argument("--frames", type=_positive, help="with --tokens-per-frame: stored [B, frames, tokens, Dv]")
    make.add_argument("--tokens-per-frame", type=_positive, help="visual tokens per frame")
    make.add_argument("--text-len", type=_positive, required=True, help="text tokens Lq")
    make.add_argument("--visual-dim", type=_positive, required=True, help="visual feature size Dv")
    make.add_argument("--text-dim", type=_positive, required=True, help="text hidden size Dt")
    make.add_argument("--dtype", choices=sorted(data.FILE_DTYPES), default="fp32", help="storage dtype")
    make.add_argument("--mask", choices=data.MASK_STYLES, default="all_previous",
                      help="q_ranges style (none: no q_ranges dataset, full attention)")
    make.add_argument("--num-images", type=_positive,
                      help="images the text is spread over (default: --frames, else 1)")
    make.add_argument("--seed", type=int, default=0, help="random seed")
    make.add_argument("--chunk-mb", type=float, default=32.0, help="rows written per chunk, in MiB")
    make.add_argument("--no-progress", action="store_true", help="no progress bar")

    run = subs["run"] = commands.add_parser(
        "run", help="train a cross-attention stack on a feature file (under mpirun/srun)",
        formatter_class=_Formatter,
        description="The main job: every rank reads its shard of the feature file, and the ranks train a "
                    "stack of cross-attention layers for a few steps on a synthetic loss. Rank 0 prints "
                    "a table per rank (step time, attention time, bytes moved, memory) and writes a JSON "
                    "report.")
    run.add_argument("--features", required=True, help="HDF5 feature file (make-features writes one)")
    run.add_argument("--layers", type=_positive, default=2, help="cross-attention layers")
    run.add_argument("--heads", type=_positive, default=8, help="query heads Hq")
    run.add_argument("--kv-heads", type=_positive, default=2, help="key/value heads Hkv")
    run.add_argument("--head-dim", type=_positive, default=64, help="head dim D")
    run.add_argument("--visual-dim", type=_positive, help="required visual feature dim (checked against the file)")
    run.add_argument("--text-dim", type=_positive, help="required text hidden dim (checked against the file)")
    run.add_argument("--algorithm", choices=ALGORITHMS, default="lvx",
                     help="lvx: queries travel; ring: K/V travel; ulysses: all-to-all over heads; "
                          "auto: the cost model picks")
    run.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=True,
                     help="recompute K/V in backward instead of keeping them")
    run.add_argument("--steps", type=_positive, default=3, help="training steps (the first is a warm-up)")
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="one GPU per rank with cuda")
    run.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights and activations")
    run.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    run.add_argument("--gate-init", type=float, default=0.1,
                     help="initial attention gate (Llama uses 0, which gives zero gradients at step 0)")
    run.add_argument("--seed", type=int, default=0, help="weight init seed (the same on every rank)")
    run.add_argument("--visual-split", type=_split_list,
                     help="visual rows per rank, e.g. 100,100,56 (default: even, first ranks one more)")
    run.add_argument("--text-split", type=_split_list, help="text rows per rank (default: even)")
    run.add_argument("--threads", type=int, help="torch CPU threads per rank (default: torch's choice)")
    run.add_argument("--report", default="lvxattn-report-<date>-<time>.json",
                     help="JSON report written by rank 0")
    run.add_argument("--no-report", action="store_true", help="write no JSON report")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    subs["info"] = commands.add_parser(
        "info", help="what this installation was built with (backends, transports, MPI, NCCL)",
        formatter_class=_Formatter,
        description="Prints the build summary (pip hides CMake's output) and checks it against this "
                    "process: one MPI shared with mpi4py, a CUDA backend where torch sees a GPU, NCCL "
                    "next to the CUDA backend. Exit code 1 when it finds a problem.")
    return parser, subs


def make_features(args: argparse.Namespace) -> int:
    from . import data

    meta = data.write_synthetic(
        args.output, batch=args.batch, visual_len=args.visual_len, frames=args.frames,
        tokens_per_frame=args.tokens_per_frame, text_len=args.text_len, visual_dim=args.visual_dim,
        text_dim=args.text_dim, dtype=args.dtype, mask_style=args.mask, num_images=args.num_images,
        seed=args.seed, chunk_bytes=max(1, int(args.chunk_mb * 2**20)), progress=not args.no_progress)
    layout = (f"{meta.frames} frames x {meta.tokens_per_frame} tokens" if meta.frames_layout
              else plural(meta.visual_len, "token"))
    print(f"wrote {args.output}: batch {meta.batch}, visual {layout} x {meta.visual_dim}, "
          f"text {meta.text_len} x {meta.text_dim}, {args.dtype}, mask {args.mask}")
    return 0


def _did_you_mean(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """' (did you mean --steps?)' for the first unknown option close to one of parser's."""
    known = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    for word in extra:
        if word.startswith("--"):
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                return f" (did you mean {close[0]}?)"
    return ""


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse like argparse, but a bad option of a command is reported with that command's usage
    (and the option it is closest to), and make-features' visual length is checked by flag name."""
    parser, subs = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = subs[args.command]
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}{_did_you_mean(command, extra)}")
    if args.command == "make-features":
        if (args.frames is None) != (args.tokens_per_frame is None):
            command.error("--frames and --tokens-per-frame go together")
        if args.visual_len is None and args.frames is None:
            command.error("give the visual length: --visual-len N, or --frames N --tokens-per-frame M")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.command == "make-features":
        from .data import FeatureFileError
        try:
            return make_features(args)
        except FeatureFileError as exc:
            print(f"lvxattn make-features: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.command == "info":
        from .info import main as info_main
        return info_main()
    from .train import run_job
    return run_job(args)
