# Writes the instantiation files of the attention kernels: one per (direction, storage
# type, head dim), the head dims read from the table in attend_config.hpp, so that each
# compiles in its own nvcc process. Files are rewritten only when their text changes.
#   in a CMakeLists:  set(LVX_INST_DIR <dir>) include(gen_instances.cmake)  -> LVX_CUDA_INSTANCES
#   as a script:      cmake -DLVX_INST_DIR=<dir> -P cuda/gen_instances.cmake
set(_config "${CMAKE_CURRENT_LIST_DIR}/attend_config.hpp")
file(STRINGS "${_config}" _line REGEX "^#define LVX_ATTEND_HEAD_DIMS ")
string(REGEX REPLACE "^#define LVX_ATTEND_HEAD_DIMS +" "" _dims "${_line}")
string(REGEX REPLACE "[ ,]+" ";" _dims "${_dims}")
if(NOT _dims)
  message(FATAL_ERROR "no LVX_ATTEND_HEAD_DIMS line in ${_config}")
endif()

set(LVX_CUDA_INSTANCES)
foreach(_dir fwd bwd)
  string(TOUPPER "${_dir}" _DIR)
  foreach(_type bf16:__nv_bfloat16 f16:__half f32:float)
    string(REPLACE ":" ";" _type "${_type}")
    list(GET _type 0 _tag)
    list(GET _type 1 _ctype)
    foreach(_d ${_dims})
      set(_file "${LVX_INST_DIR}/${_dir}_${_tag}_d${_d}.cu")
      file(CONFIGURE OUTPUT "${_file}" CONTENT
           "// Generated from attend_config.hpp by gen_instances.cmake: attention ${_dir} step, ${_ctype} storage, head dim ${_d}.\n#include \"attend_launch.cuh\"\n\nLVX_INSTANTIATE_ATTEND_${_DIR}(${_ctype}, ${_d})\n")
      list(APPEND LVX_CUDA_INSTANCES "${_file}")
    endforeach()
  endforeach()
endforeach()
