# NCCL for the GPU transport (only with the CUDA backend), in this order:
#   1. NCCL_HOME (environment or -DNCCL_HOME=<prefix>: include/nccl.h, lib/libnccl.so*),
#      or -DNCCL_INCLUDE_DIR=... -DNCCL_LIBRARY=... given by hand;
#   2. the NCCL that torch loads in the Python environment (its nvidia-nccl-cu* wheel):
#      one libnccl.so.2 per process, and lvxattn imports torch first;
#   3. the system's (libnccl-dev, or NCCL inside the CUDA toolkit).
# Sets LVX_NCCL_FOUND, LVX_NCCL_LIBRARY, LVX_NCCL_INCLUDE_DIR and LVX_NCCL_SUMMARY.
# LVX_NCCL=OFF builds without it.

set(LVX_NCCL "AUTO" CACHE STRING "NCCL transport: ON, OFF or AUTO (on when NCCL is found)")
set(LVX_NCCL_FOUND OFF)
set(LVX_NCCL_SUMMARY "OFF")
set(_nccl_where "")

if(LVX_NCCL STREQUAL "OFF")
  set(LVX_NCCL_SUMMARY "OFF (LVX_NCCL=OFF)")
  return()
endif()

if(NOT NCCL_HOME AND DEFINED ENV{NCCL_HOME})
  set(NCCL_HOME "$ENV{NCCL_HOME}")
endif()

if(NCCL_LIBRARY AND NCCL_INCLUDE_DIR)
  set(_nccl_where "given")
elseif(NCCL_HOME)
  find_path(NCCL_INCLUDE_DIR nccl.h PATHS "${NCCL_HOME}/include" NO_DEFAULT_PATH)
  find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 PATHS "${NCCL_HOME}/lib" "${NCCL_HOME}/lib64" NO_DEFAULT_PATH)
  set(_nccl_where "NCCL_HOME")
  if(NOT (NCCL_LIBRARY AND NCCL_INCLUDE_DIR))
    message(FATAL_ERROR "lvxattn: NCCL_HOME=${NCCL_HOME} has no include/nccl.h and lib/libnccl.so*")
  endif()
else()
  # torch's NCCL: ask the interpreter that builds (and, inside pip's isolated build,
  # the environment being installed to, through -I).
  set(_py "${LVX_PYTHON_FOR_MPI}")
  if(NOT _py AND Python_EXECUTABLE)
    set(_py "${Python_EXECUTABLE}")
  endif()
  if(NOT _py)
    find_program(_py NAMES python3 python)
  endif()
  if(_py)
    foreach(_flags "" "-I")
      if(NOT _nccl_where)
        execute_process(COMMAND "${_py}" ${_flags} "${CMAKE_CURRENT_LIST_DIR}/find_torch_nccl.py"
                        OUTPUT_VARIABLE _torch_nccl OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET
                        RESULT_VARIABLE _rc TIMEOUT 120)
        if(_rc EQUAL 0 AND _torch_nccl)
          list(GET _torch_nccl 0 _lib)
          list(GET _torch_nccl 1 _inc)
          set(NCCL_LIBRARY "${_lib}" CACHE FILEPATH "NCCL library" FORCE)
          set(NCCL_INCLUDE_DIR "${_inc}" CACHE PATH "NCCL include directory" FORCE)
          set(_nccl_where "the one torch loads")
        endif()
      endif()
    endforeach()
  endif()
  if(NOT _nccl_where)
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
    find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${CUDAToolkit_LIBRARY_DIR})
    set(_nccl_where "system")
  endif()
endif()

if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
  set(LVX_NCCL_FOUND ON)
  set(LVX_NCCL_LIBRARY "${NCCL_LIBRARY}")
  set(LVX_NCCL_INCLUDE_DIR "${NCCL_INCLUDE_DIR}")
  set(LVX_NCCL_SUMMARY "ON (${NCCL_LIBRARY}, ${_nccl_where})")
elseif(LVX_NCCL STREQUAL "ON")
  message(FATAL_ERROR "lvxattn: LVX_NCCL=ON but no NCCL was found: set NCCL_HOME=<prefix> "
                      "(include/nccl.h, lib/libnccl.so*) or install torch's nvidia-nccl wheel")
else()
  set(LVX_NCCL_SUMMARY "OFF (no nccl.h and libnccl found: set NCCL_HOME, or install torch with CUDA)")
endif()
