// Attention bwd step for float storage, head dim 32.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_BWD(float, 32)
