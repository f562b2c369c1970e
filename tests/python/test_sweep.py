"""The sweep harness end to end: the 2-point CI config under ``mpirun -n 2``, then
its CSV checked (columns, bytes against the DESIGN.md formulas, sane times) and
plotted. Starts mpirun itself, hence runs in a plain ``python -m pytest``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lvxattn

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments" / "configs" / "ci.toml"
TIMEOUT_S = 120

if int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1"))) > 1:
    pytest.skip("test_sweep.py starts mpirun itself: run it without mpirun", allow_module_level=True)


def command_env(cache_dir) -> dict:
    env = dict(os.environ)
    package_root = str(Path(list(lvxattn.__path__)[0]).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["OMP_NUM_THREADS"] = "1"
    env["LVX_CACHE_DIR"] = str(cache_dir)  # never touch the user's calibration cache
    return env


def ring_bytes(L_kv, P, Hkv, D, es):
    """Forward bytes of ring, largest rank, even shards: P-1 K+V blocks."""
    block = max(L_kv * (r + 1) // P - L_kv * r // P for r in range(P))
    return (P - 1) * 2 * block * Hkv * D * es


def test_ci_config_runs_end_to_end_and_plots(tmp_path):
    mpirun = Path(sys.executable).with_name("mpirun")
    mpirun = str(mpirun) if mpirun.exists() else "mpirun"
    out_csv = tmp_path / "sweep.csv"
    env = command_env(tmp_path / "cache")
    res = subprocess.run([mpirun, "--oversubscribe", "-n", "2", sys.executable, str(ROOT / "experiments" / "sweep.py"),
                          str(CONFIG), "--csv", str(out_csv)], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 points" in res.stdout
    assert list((tmp_path / "cache").glob("calibration-*.json")), "calibration was not cached"

    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["algorithm"] for r in rows] == ["lvx", "ring"]
    for r in rows:
        for col in ("date", "git_sha", "device", "mpi_library", "transport"):
            assert r[col], col
        assert int(r["P"]) == 2 and r["transport"] == "mpi"
        for col in ("fwd_ms", "bwd_ms", "pred_fwd_ms", "pred_bwd_ms"):
            assert 0 < float(r[col]) < 10_000, (col, r[col])
        assert r["bytes_exact"] == "True"
        assert int(r["fwd_bytes_sent"]) == int(r["pred_fwd_bytes"]) > 0
        assert int(r["bwd_bytes_sent"]) == int(r["pred_bwd_bytes"]) > 0
    ring = rows[1]
    assert int(ring["fwd_bytes_sent"]) == ring_bytes(int(ring["Lkv"]), 2, int(ring["Hkv"]), int(ring["D"]), 4)

    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "plot.py"), str(out_csv), "--out",
                          str(tmp_path / "png")], env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stdout + res.stderr
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert pngs, res.stdout
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_list_says_which_points_are_dropped_and_why(tmp_path):
    """gpu.toml on a build whose transports or device cannot run some points."""
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"),
                          str(ROOT / "experiments" / "configs" / "gpu.toml"), "--device", "cpu", "--list"],
                         env=command_env(tmp_path / "cache"), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "points dropped (they cannot run here)" in res.stdout
    assert "NCCL needs --device cuda" in res.stdout
    assert "points to run:" in res.stdout


def test_results_are_never_written_into_committed_files(tmp_path):
    committed = ROOT / "experiments" / "results" / "sweep_cpu.csv"
    before = committed.read_bytes()
    # Refused before any point runs, on every rank alike (one process suffices here).
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "sweep.py"),
                          str(CONFIG), "--csv", str(committed)], env=command_env(tmp_path / "cache"),
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert res.returncode != 0
    assert "is a committed result" in res.stdout + res.stderr
    assert committed.read_bytes() == before
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import common
    finally:
        sys.path.pop(0)
    fresh = Path(common.new_results_path("sweep_cpu"))
    assert fresh.parent == ROOT / "experiments" / "results" / "new" and not fresh.exists()
