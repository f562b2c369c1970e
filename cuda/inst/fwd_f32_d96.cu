// Attention fwd step for float storage, head dim 96.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_FWD(float, 96)
