"""Which GPU a rank uses: the package's one rule (the training job, benchmarks, tests).

One rank per GPU: a rank takes GPU ``local_rank % device_count``, where the local
rank (its index on its node) comes from the launcher's environment, else from a
shared-memory split of the communicator. Under ``srun --gpus-per-task=1`` each rank
sees one GPU and takes it.
"""

from __future__ import annotations

import os

import torch

LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID",
                        "MV2_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK")


def local_rank(comm=None) -> int:
    """This rank's index on its node: from the launcher's environment, else a shared-memory
    split of ``comm`` (collective), else 0 without a communicator."""
    for name in LOCAL_RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if comm is None:
        return 0
    from mpi4py import MPI
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, comm.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def pick_device(kind: str, comm=None) -> torch.device:
    """``torch.device("cpu")``, or for ``kind="cuda"`` this rank's GPU, made current.

    Raises RuntimeError when ``kind="cuda"`` and torch sees no CUDA device.
    """
    if kind == "cpu":
        return torch.device("cpu")
    if kind != "cuda":
        raise ValueError(f"device kind must be 'cpu' or 'cuda', got {kind!r}")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise RuntimeError("--device cuda but torch sees no CUDA device on this rank")
    device = torch.device("cuda", local_rank(comm) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device
