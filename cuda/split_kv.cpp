#include "split_kv.hpp"

#include <algorithm>

#include "attend_config.hpp"

namespace lvx::cuda {

FwdTile fwd_tile(int D, bool sm90) {
  if (sm90 && D == config::kSm90Fwd.head_dim) return {config::kSm90Fwd.block_m, config::kSm90Fwd.block_n, 1};
  const config::MmaFwdTile t = config::mma_fwd(D);
  return {16 * t.warps, t.block_n, config::mma_fwd_blocks_per_sm(D)};
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
