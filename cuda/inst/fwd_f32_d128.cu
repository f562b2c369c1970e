// Attention fwd step for float storage, head dim 128.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_FWD(float, 128)
