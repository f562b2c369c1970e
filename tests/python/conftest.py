import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("pytest_mpi"):
        config.addinivalue_line("markers", "mpi: needs MPI ranks (pytest-mpi, --with-mpi)")


def pytest_collection_modifyitems(config, items):
    """Without pytest-mpi, the MPI-marked tests are skipped, as the plugin skips them in a
    run without --with-mpi: they need several ranks."""
    if config.pluginmanager.hasplugin("pytest_mpi"):
        return
    skip = pytest.mark.skip(reason="MPI test: needs pytest-mpi and mpirun ... --with-mpi")
    for item in items:
        if item.get_closest_marker("mpi") is not None:
            item.add_marker(skip)
