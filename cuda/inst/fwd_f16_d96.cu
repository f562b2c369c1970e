// Attention fwd step for __half storage, head dim 96.
#include "../attend_launch.cuh"

LVX_INSTANTIATE_ATTEND_FWD(__half, 96)
