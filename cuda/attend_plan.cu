// Host-side planning of the forward launch: tile sizes and the split-KV count.
#include <algorithm>

#include "attend_dispatch.hpp"
#include "attend_fwd_sm90.cuh"
#include "kernel_traits.cuh"

namespace lvx::cuda {

bool tensor_core_head_dim(int D) { return D == 32 || D == 64 || D == 96 || D == 128; }

namespace {
template <typename Fn>
int by_head_dim(int D, Fn fn) {
  switch (D) {
    case 32: return fn(FwdConfig<32>::Traits{});
    case 64: return fn(FwdConfig<64>::Traits{});
    case 96: return fn(FwdConfig<96>::Traits{});
    default: return fn(FwdConfig<128>::Traits{});
  }
}
bool uses_sm90_fwd(int D, bool sm90) { return sm90 && D == FwdSm90::kHeadDim; }
}  // namespace

int fwd_block_m(int D, bool sm90) {
  if (uses_sm90_fwd(D, sm90)) return FwdSm90::kBlockM;
  return by_head_dim(D, [](auto tr) { return decltype(tr)::kBlockM; });
}
int fwd_block_n(int D, bool sm90) {
  if (uses_sm90_fwd(D, sm90)) return FwdSm90::kBlockN;
  return by_head_dim(D, [](auto tr) { return decltype(tr)::kBlockN; });
}
// Resident blocks per SM (registers bound them: 4 warps fit twice, 8 warps once; the
// sm_90a kernel's 161 KB of shared memory once).
int fwd_blocks_per_sm(int D, bool sm90) {
  if (uses_sm90_fwd(D, sm90)) return 1;
  return by_head_dim(D, [](auto tr) { return decltype(tr)::kWarps >= 8 ? 1 : 2; });
}

SplitPlan plan_fwd_splits(int B, int Lq, int Lkv, int Hq, int block_m, int block_n, int num_sms, int blocks_per_sm) {
  SplitPlan plan;
  plan.split_len = std::max(Lkv, 1);
  const long long blocks = (long long)B * Hq * ((Lq + block_m - 1) / block_m);
  const long long slots = (long long)num_sms * blocks_per_sm;
  const int kv_tiles = (Lkv + block_n - 1) / block_n;
  if (blocks == 0 || kv_tiles < 8) return plan;
  // Each split keeps at least 4 KV tiles; pick the count whose last wave is fullest
  // (also past one wave: 192 blocks on 132 slots leave the second wave half empty).
  const int max_splits = std::min<long long>(std::min(kv_tiles / 4, 128), (4 * slots + blocks - 1) / blocks);
  double best_eff = 0.0;
  int best = 1;
  for (int s = 1; s <= max_splits; ++s) {
    const long long total = blocks * s;
    const long long waves = (total + slots - 1) / slots;
    const double eff = (double)total / (double)(waves * slots);
    if (eff > best_eff + 0.02) { best_eff = eff; best = s; }
  }
  const int tiles_per_split = (kv_tiles + best - 1) / best;
  plan.split_len = tiles_per_split * block_n;
  plan.splits = (kv_tiles + tiles_per_split - 1) / tiles_per_split;
  return plan;
}

}  // namespace lvx::cuda
