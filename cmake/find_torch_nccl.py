"""Print the NCCL that torch loads in this Python environment: "<library>;<include dir>".

One libnccl.so.2 per process: lvxattn imports torch first, so the NCCL it should
build against is the one torch has loaded (its nvidia-nccl-cu* wheel: headers in
nvidia/nccl/include, the library in nvidia/nccl/lib). Prints nothing when torch is
missing, is a CPU build, or was built with NCCL linked in statically.
"""

import glob
import os
import sys


def loaded_nccl():
    """The libnccl file mapped into this process after importing torch, if any."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libnccl.so" in os.path.basename(path):
                    return path
    except OSError:
        pass
    return None


def wheel_nccl():
    """A libnccl.so.2 shipped by an nvidia-nccl-cu* wheel on sys.path."""
    for entry in sys.path:
        for lib in sorted(glob.glob(os.path.join(entry, "nvidia", "**", "libnccl.so*"), recursive=True)):
            return lib
    return None


def main():
    try:
        import torch
    except Exception:  # noqa: BLE001 - no usable torch: nothing to match
        return
    if getattr(torch.version, "cuda", None) is None:
        return
    lib = loaded_nccl() or wheel_nccl()
    if lib is None:
        return
    lib_dir = os.path.dirname(os.path.realpath(lib))
    include = os.path.join(os.path.dirname(lib_dir), "include")
    if os.path.exists(os.path.join(include, "nccl.h")):
        print(f"{os.path.realpath(lib)};{include}")


if __name__ == "__main__":
    main()
