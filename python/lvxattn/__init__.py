"""lvxattn: exact cross-attention over very long visual inputs, across many GPUs.

LV-XAttn keeps the large key/value blocks where they are and rotates the small
query-side blocks around a ring of ranks, overlapped with compute; K/V can be
recomputed from the shared visual features in backward so longer inputs fit.
"""

# torch first: it loads the CUDA, cuDNN and NCCL libraries the extension then shares
# (an NCCL of the same soname loaded earlier from elsewhere would break torch).
import torch  # noqa: F401

from ._core import InvalidArgumentError, LvxError, RankMismatchError, UnsupportedError, cuda_built
from .api import (ALGORITHMS, TRANSPORTS, available_transports, backward_raw, context_for, cross_attention,
                  cross_attention_forward, empty_cache, forward_raw, last_stats, mpi_device_support, reset_stats,
                  set_cost_params, total_stats)
from . import devices, masks, reference, sharding
from .info import build_info, warn_if_mismatched

warn_if_mismatched()   # CUDA backend without NCCL: slow, not wrong; say so once

__version__ = "0.2.0"

# Submodules with heavier imports (h5py, transformers, the training loop) load on first
# use, so that `lvxattn.calibrate.apply(...)` works after a plain `import lvxattn`.
_LAZY_SUBMODULES = ("calibrate", "data", "integrations", "layers", "train", "cli", "progress")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ALGORITHMS", "TRANSPORTS", "available_transports", "mpi_device_support", "cross_attention", "cross_attention_forward", "forward_raw", "backward_raw", "context_for",
    "last_stats", "set_cost_params", "total_stats", "reset_stats", "empty_cache", "masks", "cuda_built", "LvxError", "InvalidArgumentError", "RankMismatchError",
    "UnsupportedError", "build_info", "devices", "reference", "sharding",
]
