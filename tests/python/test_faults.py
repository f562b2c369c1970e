"""A failure on one rank in the middle of a ring ends the whole job promptly
with a message (MPI_Abort), instead of leaving the other ranks waiting."""

import os
import subprocess
import sys
import time

import pytest

SCRIPT = r"""
import torch, lvxattn
from mpi4py import MPI
comm = MPI.COMM_WORLD
q = torch.randn(1, 8, 2, 16); k = torch.randn(1, 64, 2, 16)
for step in range(3):
    lvxattn.cross_attention(q, k, k, comm=comm, algorithm="lvx")
print("rank", comm.rank, "finished", flush=True)
"""

pytestmark = pytest.mark.skipif("OMPI_COMM_WORLD_SIZE" in os.environ, reason="launches mpirun itself")


def launch(env_extra, n=3, timeout=60):
    env = {**os.environ, **env_extra, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    start = time.monotonic()
    proc = subprocess.run(["mpirun", "--oversubscribe", "-n", str(n), sys.executable, "-c", SCRIPT],
                          env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.mark.timeout(120)
def test_fault_mid_ring_aborts_every_rank():
    proc, seconds = launch({"LVX_INJECT_FAULT": "1:1"})
    assert proc.returncode != 0
    assert "failed on rank 1, aborting the job" in proc.stderr + proc.stdout
    assert "fault injected at ring step 1" in proc.stderr + proc.stdout
    assert "finished" not in proc.stdout
    assert seconds < 60


@pytest.mark.timeout(120)
def test_without_fault_the_same_job_finishes():
    proc, _ = launch({})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("finished") == 3
