// Attention bwd step for __half storage, head dim 32.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_BWD(__half, 32)
