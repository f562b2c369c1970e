// Attention fwd step for __half storage, head dim 32.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_FWD(__half, 32)
