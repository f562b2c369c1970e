// Attention fwd step for __nv_bfloat16 storage, head dim 96.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_FWD(__nv_bfloat16, 96)
