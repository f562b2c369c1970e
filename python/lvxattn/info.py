"""What this installation holds and whether it fits the machine: ``lvxattn.build_info()``
and ``python -m lvxattn info``.

pip hides the build's own summary (CMake's output) unless run with ``-v``; this
prints the same facts after the fact: the backends and transports that were
built, the MPI the extension links and the one mpi4py loaded (they must be one
library), and what torch sees.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

from . import _build_info, _core


def _mapped_libraries(fragment: str) -> list[str]:
    """Files whose name contains ``fragment`` mapped into this process (Linux), deduplicated."""
    found: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if fragment in os.path.basename(path):
                    real = os.path.realpath(path)
                    if real not in found:
                        found.append(real)
    except OSError:
        pass
    return found


def build_info(check_mpi4py: bool = True) -> dict:
    """This build's backends and transports, and checks against the running process.

    Returns a dict: ``version``; ``cpu`` (the CPU kernels and BLAS this machine runs);
    ``cuda``, ``nccl``, ``mpi`` (CMake's summary lines:
    ON/OFF and where from); ``transports`` (``available_transports()``);
    ``torch`` (version, CUDA version or None, GPUs visible); ``mpi4py`` (its MPI
    library's version line, when ``check_mpi4py`` and mpi4py imports);
    ``libmpi_loaded`` (the libmpi files mapped into this process); ``problems``
    (sentences, empty when all is well). Importing mpi4py initializes MPI.
    """
    from .api import available_transports

    info = {
        "version": _build_info.VERSION,
        "cpu": _core.cpu_kernels_describe(),
        "cuda": _build_info.CUDA,
        "nccl": _build_info.NCCL,
        "mpi": _build_info.MPI,
        "transports": available_transports(),
        "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                  "gpus": torch.cuda.device_count() if torch.version.cuda else 0},
        "mpi4py": None,
        "libmpi_loaded": [],
        "problems": [],
    }
    problems = info["problems"]
    if check_mpi4py:
        try:
            from mpi4py import MPI
            info["mpi4py"] = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a diagnosis
            problems.append(f"mpi4py does not import: {type(exc).__name__}: {exc}")
    info["libmpi_loaded"] = _mapped_libraries("libmpi.so")
    if len(info["libmpi_loaded"]) > 1:
        problems.append("more than one MPI library is loaded in this process "
                        f"({', '.join(info['libmpi_loaded'])}): lvxattn and mpi4py must be built against "
                        "the same MPI (README: Installing on a cluster)")
    built = _build_info.MPI_LIBRARY_VERSION
    if info["mpi4py"] and built and info["mpi4py"].split()[:2] != built.split()[:2]:
        problems.append(f"lvxattn was built with {built} but mpi4py uses {info['mpi4py']}")
    if info["torch"]["gpus"] and not _core.cuda_built():
        problems.append("torch sees a GPU but this build has no CUDA backend (nvcc was not found when it was "
                        "built, or LVX_CUDA=OFF): CUDA tensors are rejected")
    if _core.cuda_built() and "nccl" not in info["transports"] and torch.version.cuda:
        problems.append(NO_NCCL)
    return info


NO_NCCL = ("this build has the CUDA backend but no NCCL transport: GPU ranks exchange data through "
           "host-staged MPI, several times slower. Reinstall where torch's NCCL is visible (same Python "
           "environment) or set NCCL_HOME (README: Installing)")


def format_info(info: dict) -> str:
    lines = [
        f"lvxattn {info['version']} ({os.path.dirname(os.path.abspath(__file__))})",
        f"  CPU backend    ON ({info['cpu']})",
        f"  CUDA backend   {info['cuda']}",
        f"  MPI transport  {info['mpi']}",
        f"  NCCL transport {info['nccl']}",
        f"  transports     {', '.join(info['transports'])}",
        f"  torch          {info['torch']['version']}"
        + (f", CUDA {info['torch']['cuda']}, {info['torch']['gpus']} GPU(s) visible" if info["torch"]["cuda"]
           else ", CPU build"),
    ]
    if info["mpi4py"] is not None:
        lines.append(f"  mpi4py's MPI   {info['mpi4py']}")
    if info["libmpi_loaded"]:
        lines.append(f"  libmpi loaded  {', '.join(info['libmpi_loaded'])}")
    lines += [f"problem: {p}" for p in info["problems"]] or ["no problems found"]
    return "\n".join(lines)


def warn_if_mismatched() -> None:
    """At import: the one mismatch that costs speed without an error (CUDA without NCCL)."""
    from .api import available_transports

    if _core.cuda_built() and "nccl" not in available_transports() and torch.version.cuda:
        warnings.warn(f"lvxattn: {NO_NCCL}; `python -m lvxattn info` says more", stacklevel=3)


def main() -> int:
    info = build_info()
    print(format_info(info))
    return 1 if info["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
